"""Downstream evaluation and representation health.

``evaluate(checkpoint_or_model, dataset, tasks, cfg) -> {"eval/<task>/<metric>": value}``;
``oskar eval --checkpoint PATH`` (see :mod:`oskar_ray.eval.cli`). Heavy imports
(torch, mlflow) load lazily so ``import oskar_ray.eval`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from ..probes.health import feature_std, features_health, health_metrics, rankme

__all__ = ["evaluate", "evaluate_full", "feature_std", "features_health", "health_metrics", "rankme"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "evaluate_full", "TASKS"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
