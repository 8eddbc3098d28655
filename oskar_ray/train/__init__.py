"""Training: the single-process step and loop (Ray Train wraps the same step)."""

from .loop import (
    NonFiniteLossError,
    apply_schedules,
    build_optimizer,
    example_stream,
    seed_everything,
    train,
    train_step,
    unwrap,
)
from .schedules import lr_at, weight_decay_at

__all__ = [
    "NonFiniteLossError",
    "apply_schedules",
    "build_optimizer",
    "example_stream",
    "lr_at",
    "seed_everything",
    "train",
    "train_step",
    "unwrap",
    "weight_decay_at",
]
