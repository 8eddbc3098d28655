"""Metric names that one layer logs and another reads (no heavy imports: the report and the sweep spec load it).

The online kNN probe of pretraining (``oskar_ray.tune.signal``) logs ``probe/<view>/knn_top1`` and
``probe/mean``; the scheduler ranks trials on them, the report draws them as training curves.
"""

PROBE_PREFIX = "probe/"


def probe_metrics(views: list[str]) -> list[str]:
    """Every metric the online probe logs for these views."""
    return [f"{PROBE_PREFIX}{view}/knn_top1" for view in views] + [f"{PROBE_PREFIX}mean"]
