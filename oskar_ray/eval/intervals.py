"""95 % intervals for eval metrics: Wilson for proportions, a seeded percentile bootstrap for the rest.

Runbook::

    lo, hi = wilson(0.335, 200)                       # a top-1 of 67 / 200 clips: (0.273, 0.403)
    lo, hi = bootstrap(lambda idx: median_rank(ranks[idx]), len(ranks), seed=0)
    result.add(key, value, interval=(lo, hi))         # a task's TaskResult; logged as companion metrics
    interval_keys("eval/action/video/linear/top1")    # (..._ci95_lo, ..._ci95_hi)

Each interval goes to MLflow beside its metric as ``<metric>_ci95_lo`` / ``<metric>_ci95_hi``, so a sweep
table (and the report) can show whether two trials differ by more than their test sets can resolve: on
200 clips a 33.5 % top-1 reads 27.3-40.3 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..metric_names import CI_HIGH, CI_LOW, interval_keys, is_interval

__all__ = ["CI_HIGH", "CI_LOW", "bootstrap", "interval_keys", "is_interval", "wilson"]

Z95 = 1.959964
BOOTSTRAP_REPS = 1000


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` items (NaN, NaN for n = 0 or NaN p)."""
    if n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    p = min(max(p, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the interval contains p; rounding alone could put an end a hair inside it (p = 1 -> 0.9999999999)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def bootstrap(statistic: Callable[[np.ndarray], float], n_items: int, seed: int = 0,
              reps: int = BOOTSTRAP_REPS) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic(indices)`` over ``reps`` resamples of ``n_items`` with replacement."""
    if n_items <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(reps)], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))
