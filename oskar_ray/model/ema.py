"""EMA target encoders: the momentum schedule and the in-place update.

``momentum_at(cfg, step, total)`` gives each modality's momentum for a step
(``ema.start`` → ``ema.end``, cosine / linear / constant; ``ema.modality_start``,
``modality_end`` and ``modality_schedule`` give a modality its own schedule, so
its target encoder's blocks differ from the others' — under one shared schedule
the per-modality copies of the same fusion encoder stay identical). ``ema_update`` applies
``target = m * target + (1 - m) * source`` with fused foreach kernels.
"""

from __future__ import annotations

import math

import torch

from ..config import OskarConfig


def momentum_at(cfg: OskarConfig, step: int, total_steps: int) -> dict[str, float]:
    """Each enabled modality's momentum at ``step``: its own start, end and schedule kind
    (``ema.modality_start|end|schedule``, else ``ema.start|end|schedule``)."""
    e = cfg.ema
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    out = {}
    for name in cfg.enabled_modalities:
        start, end = e.modality_start.get(name, e.start), e.modality_end.get(name, e.end)
        out[name] = start + (end - start) * _ramp(e.modality_schedule.get(name, e.schedule), progress)
    return out


def _ramp(schedule: str, progress: float) -> float:
    if schedule == "constant":
        return 0.0
    if schedule == "linear":
        return progress
    return 0.5 * (1.0 - math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(targets: list[torch.Tensor], sources: list[torch.Tensor], momentum: float) -> None:
    if momentum >= 1.0 or not targets:
        return
    torch._foreach_lerp_(targets, sources, 1.0 - momentum)
