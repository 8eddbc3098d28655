"""EMA target encoders: the momentum schedule and the in-place update.

``momentum_at(cfg, step, total)`` gives each modality's momentum for a step
(``ema.start`` → ``ema.end``, cosine / linear / constant; ``ema.modality_start``
overrides the start per modality). ``ema_update`` applies
``target = m * target + (1 - m) * source`` with fused foreach kernels.
"""

from __future__ import annotations

import math

import torch

from ..config import OskarConfig


def momentum_at(cfg: OskarConfig, step: int, total_steps: int) -> dict[str, float]:
    e = cfg.ema
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if e.schedule == "constant":
        weight = 0.0
    elif e.schedule == "linear":
        weight = progress
    else:
        weight = 0.5 * (1.0 - math.cos(math.pi * progress))
    return {
        name: (start := e.modality_start.get(name, e.start)) + (e.end - start) * weight
        for name in cfg.enabled_modalities
    }


@torch.no_grad()
def ema_update(targets: list[torch.Tensor], sources: list[torch.Tensor], momentum: float) -> None:
    if momentum >= 1.0 or not targets:
        return
    torch._foreach_lerp_(targets, sources, 1.0 - momentum)
