"""Label efficiency: top-1 vs the share of training labels, per view and protocol, for the best trial.

Reads ``eval/lowshot/<view>/<protocol>/<pct>pct/top1`` (view: video / skeleton / fusion; protocol: linear /
attentive / finetune / supervised; ``<pct>`` the percentage of the train labels, ``1``, ``10``, ``100``) and the
``_ci95_lo / _hi`` interval companions; the older ``eval/lowshot/<pct>pct/<view>/<protocol>/top1`` spelling is
read the same way. One panel per view, x = % of labels (log scale), y = top-1, one line per protocol with its
95 % intervals as bars. Drawn for the best trial by the ranking metric (else the best trial that has such
metrics); nothing when no run has them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .figures import Plot, interval_bars, new_figure, save
from .html import best_run
from .labels import fmt_value, is_interval, lower_is_better, metric_unit
from .runs import SweepRuns

SECTION = "Label efficiency"
VIEWS = ("video", "skeleton", "fusion")
PROTOCOLS = ("linear", "attentive", "finetune", "supervised")
_NUMBER = r"(?P<pct>\d+(?:\.\d+)?)pct"
_PATTERNS = (re.compile(rf"^eval/lowshot/(?P<view>[^/]+)/(?P<protocol>[^/]+)/{_NUMBER}/top1$"),
             re.compile(rf"^eval/lowshot/{_NUMBER}/(?P<view>[^/]+)/(?P<protocol>[^/]+)/top1$"))
_COLORS = {"linear": "tab:blue", "attentive": "tab:orange", "finetune": "tab:green", "supervised": "tab:gray",
           "knn": "tab:purple"}


def lowshot_metrics(keys: list[str]) -> dict[str, tuple[str, str, float]]:
    """metric -> (view, protocol, % of labels) for the label-efficiency metrics among ``keys``."""
    out = {}
    for key in keys:
        if is_interval(key):
            continue
        for pattern in _PATTERNS:
            match = pattern.match(key)
            if match:
                out[key] = (match["view"], match["protocol"], float(match["pct"]))
                break
    return out


def label_efficiency_plot(sweep: SweepRuns, primary: str | None, out_dir: Path) -> list[Plot]:
    found = lowshot_metrics(sweep.metric_keys("eval/lowshot/"))
    if not found:
        return []
    run = _trial(sweep, primary, list(found))
    views = sorted({v for v, _, _ in found.values()}, key=lambda v: (VIEWS.index(v) if v in VIEWS else len(VIEWS), v))
    fig, axes = new_figure(len(views), ncols=3, width=4.8, height=3.9)
    for ax, view in zip(axes, views, strict=True):
        _panel(ax, sweep, run, view, found)
    label = sweep.frame.loc[run, "label"]
    chosen = f"best by {primary}" if primary and run == best_run(sweep, primary) else "best with low-shot metrics"
    fig.suptitle(f"Label efficiency: top-1 vs share of training labels — {label} ({chosen})")
    fig.tight_layout()
    return [save(fig, out_dir, "label_efficiency", f"label efficiency of {label} ({chosen})", SECTION)]


def _trial(sweep: SweepRuns, primary: str | None, metrics: list[str]):
    """The best trial by ``primary`` if it has low-shot metrics, else the best (or first) trial that has some."""
    has = sweep.frame[[f"metrics.{m}" for m in metrics]].notna().any(axis=1)
    best = best_run(sweep, primary)
    if best is not None and has[best]:
        return best
    values = sweep.metric(primary)[has].dropna() if primary else pd.Series(dtype=float)
    if values.empty:
        return has[has].index[0]
    return values.idxmin() if lower_is_better(primary) else values.idxmax()


def _panel(ax, sweep: SweepRuns, run, view: str, found: dict[str, tuple[str, str, float]]) -> None:
    protocols = sorted({p for v, p, _ in found.values() if v == view},
                       key=lambda p: (PROTOCOLS.index(p) if p in PROTOCOLS else len(PROTOCOLS), p))
    ticks: set[float] = set()
    for protocol in protocols:
        points = sorted((pct, key) for key, (v, p, pct) in found.items() if v == view and p == protocol)
        x = [pct for pct, _ in points]
        y = [sweep.metric(key)[run] for _, key in points]
        ends = [[end[run] for end in sweep.interval(key)] for _, key in points]
        shown = [i for i, value in enumerate(y) if pd.notna(value)]
        if not shown:
            continue
        color = _COLORS.get(protocol)
        ax.plot([x[i] for i in shown], [y[i] for i in shown], "-o", color=color, label=protocol)
        interval_bars(ax, [x[i] for i in shown], [ends[i][0] for i in shown], [ends[i][1] for i in shown],
                      color=color or "black", label=None)
        ticks.update(x[i] for i in shown)
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(sorted(ticks), [f"{fmt_value(t)} %" for t in sorted(ticks)])
        ax.minorticks_off()
    ax.set(xlabel="training labels used (%, log scale)", ylabel=metric_unit("top1"), title=view)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title="protocol (bars: 95 % interval)", title_fontsize=7)
