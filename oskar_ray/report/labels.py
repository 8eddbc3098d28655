"""Human-readable names and units for metric and parameter keys (axis labels, table headers).

The units follow what the code logs: probe/QA accuracies are fractions (0–1),
retrieval recall@K is a percentage, localization mAP a fraction, RankMe an
effective rank (number of dimensions), FLOPs are counted per sample stream.
"""

from __future__ import annotations

import math
import re

from ..metric_names import headline_metrics, interval_keys, is_interval

__all__ = ["fmt_interval", "fmt_value", "headline_metrics", "interval_keys", "is_interval", "lower_is_better",
           "metric_unit", "short_names", "slug"]

#: (pattern on the last key component, axis label) — first match wins
_UNITS: list[tuple[str, str]] = [
    (r"^top\d+$", "top-{n} accuracy (fraction, 0–1)"),
    (r"^accuracy$", "accuracy (fraction, 0–1)"),
    (r"^R(\d+)$", "recall@{n} (%)"),
    (r"^medR$", "median rank (lower is better)"),
    (r"^mAP(_[\d.]+)?$", "mAP (fraction, 0–1)"),
    (r"^rankme$", "RankMe (effective rank, dims)"),
    (r"^std$", "feature std (per dimension)"),
]

_EXACT: dict[str, str] = {
    "loss": "latent prediction loss",
    "loss/align": "cross-modal contrastive loss (InfoNCE, clip level)",
    "lr": "learning rate",
    "samples_per_s": "throughput (samples / s)",
    "train_flops": "training compute (FLOPs)",
    "flops_per_step": "compute per step (FLOPs)",
}

#: metrics where a smaller value is better (drives "best" and Pareto direction)
_LOWER_IS_BETTER = re.compile(r"(^|/)(loss|medR)(/|$)")


def metric_unit(key: str) -> str:
    """An axis label with units for a metric key (``eval/action/video/linear/top1`` → top-1 accuracy...)."""
    if key in _EXACT:
        return _EXACT[key]
    if key.startswith("loss/align/"):
        return f"video <-> {key.rsplit('/', 1)[1]} contrastive loss (InfoNCE, clip level)"
    if key.startswith("loss/"):
        return f"{key.split('/', 1)[1]} latent prediction loss"
    last = key.rsplit("/", 1)[-1]
    if "rankme" in key.lower():
        return "RankMe (effective rank, dims)"
    for pattern, label in _UNITS:
        match = re.match(pattern, last)
        if match:
            digits = re.findall(r"\d+", last)
            return label.format(n=digits[0] if digits else "")
    return last


def lower_is_better(key: str) -> bool:
    return bool(_LOWER_IS_BETTER.search(key))


def short_names(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous dotted suffix per key (``modalities.video.mask_ratio`` → ``video.mask_ratio``).

    A bare last component is used only when it reads on its own (``input_tokens``, not ``start`` or ``kind``).
    """
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            clashes = [k for k in keys if k != key and (k == suffix or k.endswith("." + suffix))]
            if not clashes and (n > 1 or "_" in suffix or len(parts) == 1):
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def fmt_value(value) -> str:
    """Compact text for a table cell or a heatmap annotation; missing values are an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if value == int(value) and abs(value) < 1e5:
            return f"{int(value)}"
        return f"{value:.4g}"
    return str(value)


def fmt_interval(low: float, high: float) -> str:
    """``[0.273, 0.403]``: three significant digits, enough to see whether two intervals overlap."""
    def short(v: float) -> str:
        if v == 0 or abs(v) >= 1e5 or abs(v) < 1e-3:
            return fmt_value(v)
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"[{short(float(low))}, {short(float(high))}]"


def slug(text: str) -> str:
    """A file-name-safe version of a metric/param key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"
