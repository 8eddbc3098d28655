"""Per-step schedules: LR (linear warmup + cosine to ``min_lr``) and weight decay
(cosine from ``weight_decay`` to ``weight_decay_end``, DINO-style). The EMA
momentum schedule lives with the EMA (``oskar_ray.model.ema.momentum_at``)."""

from __future__ import annotations

import math

from ..config import TrainConfig


def _cosine(progress: float, start: float, end: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    return _cosine((step - cfg.warmup_steps) / decay_steps, cfg.lr, cfg.min_lr)


def weight_decay_at(cfg: TrainConfig, step: int) -> float:
    # _cosine runs start→end as progress goes 0→1
    return _cosine(step / max(cfg.steps, 1), cfg.weight_decay, cfg.weight_decay_end)
