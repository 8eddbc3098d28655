"""Training: one optimisation step, the single-process loop, and the Ray Train run that wraps the same step.

``step.py`` (one step), ``single_process.py`` (``oskar pretrain --local``, tests),
``ray_trainer.py`` (the driver: a ``TorchTrainer`` run, ``oskar pretrain``),
``worker_loop.py`` (inside every Ray Train worker), ``health_check.py`` (the health check both loops run),
``checkpoint.py``, ``schedules.py``.
"""

from .schedules import lr_at, weight_decay_at
from .single_process import example_stream, run_single_process, train
from .step import NonFiniteLossError, apply_schedules, build_optimizer, seed_everything, train_step, unwrap

__all__ = [
    "NonFiniteLossError",
    "apply_schedules",
    "build_optimizer",
    "example_stream",
    "lr_at",
    "run_single_process",
    "seed_everything",
    "train",
    "train_step",
    "unwrap",
    "weight_decay_at",
]
