"""Training FLOPs per optimisation step, from the config alone (no model is built).

Runbook::

    flops_per_step(cfg)            # forward + backward FLOPs of one step, all workers together
    flops_per_step(cfg) * steps    # ``train_flops``: the x axis of compute-matched comparisons

Counted (multiply-add = 2 FLOPs), per sample, for the transformer blocks that
dominate: the **fusion encoder** on ``budget.input_tokens`` (forward +
backward = 3x forward), one **target encoder** pass per enabled modality on
its *full* token set (forward only, no grad), and the **predictor** on
``budget.target_tokens`` queries (3x; ``cross``: self-attention over the
queries + cross-attention to the projected fused tokens; ``concat``:
self-attention over fused tokens and queries together). Tokenizer
embeddings, norms, softmax and the EMA update are left out (< 5 % at the tiny
geometry). Text counts ``max_len`` tokens (an upper bound: captions are padded).
"""

from __future__ import annotations

from ..config import OskarConfig
from ..modalities import modality_class

#: backward costs about twice the forward
FWD_BWD = 3.0


def block_flops(tokens: int, dim: int, mlp_ratio: float, context: int | None = None) -> float:
    """Forward FLOPs of one transformer block over ``tokens`` tokens of width ``dim``.

    Self-attention: qkv + output projections (4 dim² MACs per token) and the
    two attention matmuls (2 tokens·dim MACs per token); MLP: 2 mlp_ratio·dim²
    MACs per token. ``context``: the block also cross-attends to that many
    tokens (q + output projections, k/v projections of the context, attention).
    """
    macs = tokens * (4 * dim * dim + 2 * tokens * dim + 2 * mlp_ratio * dim * dim)
    if context:
        macs += tokens * (2 * dim * dim + 2 * context * dim) + context * 2 * dim * dim
    return 2.0 * macs


def modality_tokens(cfg: OskarConfig) -> dict[str, int]:
    """Full token count per enabled modality (what each target encoder sees)."""
    return {name: modality_class(name)(cfg.modalities[name]).num_tokens for name in cfg.enabled_modalities}


def flops_per_sample(cfg: OskarConfig) -> float:
    m, p, b = cfg.model, cfg.predictor, cfg.budget
    fusion = m.depth * block_flops(b.input_tokens, m.dim, m.mlp_ratio)
    targets = sum(m.depth * block_flops(n, m.dim, m.mlp_ratio) for n in modality_tokens(cfg).values())
    # projections in and out of the narrow predictor
    io = 2.0 * (b.input_tokens + 2 * b.target_tokens) * m.dim * p.dim
    if p.kind == "cross":
        predictor = p.depth * block_flops(b.target_tokens, p.dim, p.mlp_ratio, context=b.input_tokens)
    else:
        predictor = p.depth * block_flops(b.input_tokens + b.target_tokens, p.dim, p.mlp_ratio)
    return FWD_BWD * (fusion + predictor + io) + targets


def flops_per_step(cfg: OskarConfig) -> float:
    """FLOPs of one optimisation step: ``train.batch_size`` samples (summed over workers)."""
    return cfg.train.batch_size * flops_per_sample(cfg)
