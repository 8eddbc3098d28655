"""Downstream evaluation and representation health."""

from .health import feature_std, health_metrics, rankme

__all__ = ["feature_std", "health_metrics", "rankme"]
