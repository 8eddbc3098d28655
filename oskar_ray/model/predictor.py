"""The predictor: narrow, parameter-efficient, cross-attending to fused tokens.

Queries are a learned mask token + a projection of each target slot's
position + modality embedding. ``kind="cross"`` (default): queries
self-attend and cross-attend to the (projected) fused tokens. ``kind="concat"``:
one self-attention stack over ``[fused; queries]`` (I-JEPA-style), kept for the
ablation. Output is mapped back to the encoder width ``D``.

``query_mask`` (``(B, T, T)`` bool) restricts which queries see each other: the
per-modality predictors use it so each modality's queries only talk among
themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PredictorConfig
from .blocks import Block, CrossBlock, init_weights


class Predictor(nn.Module):
    def __init__(self, model_dim: int, cfg: PredictorConfig):
        super().__init__()
        self.kind = cfg.kind
        self.context_proj = nn.Linear(model_dim, cfg.dim)
        self.query_proj = nn.Linear(model_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(cfg.dim))
        block = CrossBlock if cfg.kind == "cross" else Block
        self.blocks = nn.ModuleList(block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.out = nn.Linear(cfg.dim, model_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self, context: torch.Tensor, slots: torch.Tensor, query_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``context (B, K, D)``, ``slots (B, T, D)`` → predictions ``(B, T, D)``."""
        queries = self.mask_token + self.query_proj(slots)
        context = self.context_proj(context)
        attn_mask = None if query_mask is None else query_mask[:, None]
        if self.kind == "cross":
            for block in self.blocks:
                queries = block(queries, context, attn_mask)
        else:
            queries = self._concat(context, queries, attn_mask)
        return self.out(self.norm(queries))

    def _concat(self, context: torch.Tensor, queries: torch.Tensor, attn_mask) -> torch.Tensor:
        n_context = context.shape[1]
        if attn_mask is not None:
            # every token may see the context; queries see only the queries query_mask allows
            batch, _, n_query, _ = attn_mask.shape
            full = torch.ones(batch, 1, n_context + n_query, n_context + n_query,
                              dtype=torch.bool, device=queries.device)
            full[:, :, n_context:, n_context:] = attn_mask
            full[:, :, :n_context, n_context:] = False
            attn_mask = full
        x = torch.cat([context, queries], dim=1)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x[:, n_context:]
