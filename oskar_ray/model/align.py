"""Clip-level cross-modal contrastive term (``model.align_weight``, off by default).

Why: on the built-in benchmark the token-level video → skeleton prediction stays
near its slot-mean baseline (loss ≈ 0.95 after 1800 steps), so the video encoder
learns little pose from it, although the skeleton target features — even from a
random skeleton encoder — separate the actions perfectly (linear probe 100 %).
Asking each clip's pooled video *context* to pick out its own clip's pooled
skeleton *target* features among the batch's (symmetric InfoNCE, as CLIP) needs
only what the two modalities share — the motion — and measured the largest video
probe gain of any lever tried (README, "Downstream: OSKAR vs random init").

The target side is the frozen-per-step EMA target encoder (no gradient), so the
term is still "predict the latent of another modality", at clip level; light
heads on both sides (an MLP on the context, a linear map on the target) keep the
encoder features free of the contrastive geometry.

Use::

    align = CrossModalAlignment(dim, temperature)
    loss = align(pooled_context, pooled_targets, rows)   # scalar, or None (fewer than two clips)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

#: parameter prefixes of the single alignment module that checkpoints held before ``align_to`` was a list
_LEGACY = ("alignment.context_head.", "alignment.target_head.")


class CrossModalAlignment(nn.Module):
    def __init__(self, dim: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.context_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.target_head = nn.Linear(dim, dim)

    def forward(self, source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """``source``: ``(B, D)`` pooled context tokens of one modality; ``target``: ``(B, D)`` pooled target-encoder
        features of the other (layer-normed and standardised over the batch here); ``rows``: ``(B,)`` the clips
        carrying both sides — the others drop out. None when fewer than two clips remain (no negatives)."""
        if int(rows.sum()) < 2:
            return None
        goal = F.layer_norm(target[rows].float(), target.shape[-1:])
        # standardised over the batch: what all clips share would otherwise dominate every cosine
        goal = (goal - goal.mean(0)) / goal.std(0).clamp(min=1e-4)
        queries = F.normalize(self.context_head(source[rows]), dim=-1)
        keys = F.normalize(self.target_head(goal.to(source.dtype)), dim=-1)
        logits = queries @ keys.T / self.temperature
        labels = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels))


def load_legacy_alignment(alignment: nn.ModuleDict, path: str, missing: list[str],
                          unexpected: list[str]) -> tuple[list[str], list[str]]:
    """Load a pre-list checkpoint's ``alignment.*`` weights into the one aligned target now keyed by name
    (``alignment.<target>.*``), so older runs still evaluate and resume; returns what is still missing /
    unexpected."""
    legacy = [k for k in unexpected if k.startswith(_LEGACY)]
    if not legacy or len(alignment) != 1:
        return missing, unexpected
    (name, module), = alignment.items()
    weights = load_file(path)
    module.load_state_dict({k.removeprefix("alignment."): weights[k] for k in legacy})
    adopted = {f"alignment.{name}.{k.removeprefix('alignment.')}" for k in legacy}
    return [k for k in missing if k not in adopted], [k for k in unexpected if k not in legacy]
