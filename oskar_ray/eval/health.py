"""The ``health`` eval task: RankMe and per-dimension std of frozen test features (see oskar_ray.probes.health)."""

from __future__ import annotations

from ..probes.health import features_health
from ..probes.views import action_views


def run_health(ctx) -> dict[str, float]:
    """The eval task: RankMe and std of pooled test features per modality (target) and fused."""
    views = {**action_views(ctx.cfg.enabled_modalities), "text": "target:text"}
    feats = {short: ctx.cache.get("test", view).pooled for short, view in views.items() if view in ctx.cache.views}
    return features_health(feats)
