"""Per-trial training curves and accuracy vs training compute (Pareto front).

Curves come from ``MlflowClient.get_metric_history``: the total and
per-modality ``loss``, every RankMe key logged during training (any key
containing ``rankme`` outside ``eval/``), and the online kNN probe that ranks trials for the scheduler
(``probe/...``, :data:`oskar_ray.metric_names.PROBE_PREFIX`) when the trials log one. One colour per trial,
the same across figures; trials the scheduler stopped early (``oskar.stopped_at_step``) or that did not finish
(FAILED / KILLED) are dashed and tagged in the legend — an early-stopped curve is worth seeing.

Compute is ``train_flops`` (else ``flops_per_step`` × ``train.steps``); the
Pareto front holds the trials that no other trial beats on both accuracy and
compute; each trial's 95 % interval (where the eval logged one) is drawn as a bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..metric_names import PROBE_PREFIX
from .figures import Plot, interval_bars, new_figure, save, trial_colors
from .labels import lower_is_better, metric_unit
from .runs import SweepRuns, histories

CURVES = "Training curves per trial"
PARETO = "Accuracy vs training compute"
_MAX_PANELS = 6


def curve_families(sweep: SweepRuns) -> list[tuple[str, list[str]]]:
    keys = sweep.metric_keys()
    loss = [k for k in keys if k == "loss" or k.startswith("loss/")]
    rankme = [k for k in keys if "rankme" in k.lower() and not k.startswith("eval/")]
    probe = [k for k in keys if k.startswith(PROBE_PREFIX)]
    families = [("loss", loss), ("rankme", rankme), ("probe", probe)]
    return [(name, ks[:_MAX_PANELS]) for name, ks in families if ks]


def curve_plots(sweep: SweepRuns, out_dir: Path) -> list[Plot]:
    colors = dict(zip(sweep.frame["run_id"], trial_colors(len(sweep.frame)), strict=True))
    legends = dict(zip(sweep.frame["run_id"], _legend_labels(sweep), strict=True))
    plots = []
    for family, keys in curve_families(sweep):
        data = histories(sweep, keys)
        if data:
            plots.append(_family_figure(sweep, family, keys, data, colors, legends, out_dir))
    return plots


def _legend_labels(sweep: SweepRuns) -> list[tuple[str, bool]]:
    """(legend label, drawn solid) per run: trials that ended early, stopped or failed, are dashed and say so."""
    out = []
    for (_, row), outcome in zip(sweep.frame.iterrows(), sweep.outcome(), strict=True):
        if outcome == "stopped early":
            out.append((f"{row['label']} [stopped at {row.get('tags.oskar.stopped_at_step') or '?'}]", False))
        else:
            done = outcome in ("FINISHED", "RUNNING")
            out.append((row["label"] if done else f"{row['label']} [{outcome}]", done))
    return out


def _family_figure(sweep, family, keys, data, colors, legends, out_dir) -> Plot:
    fig, axes = new_figure(len(keys), ncols=2, width=6.0, height=4.0)
    for ax, key in zip(axes, keys, strict=True):
        values = []
        for _, row in sweep.frame.iterrows():
            points = data.get((row["run_id"], key))
            if points is None:
                continue
            label, done = legends[row["run_id"]]
            ax.plot(points["step"], points["value"], ls="-" if done else "--", color=colors[row["run_id"]],
                    label=label, marker="o" if len(points) == 1 else None)
            values.extend(points["value"].tolist())
        if family == "loss" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="training step", ylabel=metric_unit(key), title=key)
        ax.grid(alpha=0.3)
    handles, labels = _unique_legend(axes)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title="trial")
    titles = {"loss": "Pretraining loss per trial", "rankme": "RankMe during pretraining (feature health)",
              "probe": "Online kNN probe during pretraining (what the scheduler ranks on)"}
    fig.suptitle(titles[family])
    fig.tight_layout()
    return save(fig, out_dir, f"curves_{family}", titles[family], CURVES)


def _unique_legend(axes):
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen.keys())


def training_flops(sweep: SweepRuns) -> pd.Series:
    """``train_flops`` per run, else ``flops_per_step`` × ``train.steps``; NaN when neither is logged."""
    flops = sweep.metric("train_flops").copy()
    per_step = sweep.metric("flops_per_step") * pd.to_numeric(sweep.param("train.steps"), errors="coerce")
    return flops.fillna(per_step)


def pareto_front(x: np.ndarray, y: np.ndarray, maximize: bool = True) -> np.ndarray:
    """Mask of the points not dominated by another (less or equal compute and a better score)."""
    x = np.asarray(x, dtype=float)
    score = np.asarray(y, dtype=float) * (1 if maximize else -1)
    order = np.lexsort((-score, x))  # compute ascending, best score first among equal compute
    front = np.zeros(len(x), dtype=bool)
    best = -np.inf
    for i in order:
        if score[i] > best:
            front[i] = True
            best = score[i]
    return front


def pareto_plot(sweep: SweepRuns, metrics: list[str], out_dir: Path) -> list[Plot]:
    flops = training_flops(sweep)
    metrics = [m for m in metrics if (sweep.metric(m).notna() & flops.notna()).any()]
    if not metrics:
        if flops.isna().all():
            sweep.notes.append("no train_flops / flops_per_step logged: the compute plot is skipped")
        return []
    fig, axes = new_figure(len(metrics), ncols=2, width=6.5, height=4.5)
    for ax, metric in zip(axes, metrics, strict=True):
        _pareto_axes(ax, sweep, flops, metric)
    fig.suptitle("Downstream score vs training compute (Pareto front in red)")
    fig.tight_layout()
    return [save(fig, out_dir, "pareto_flops", "accuracy vs training FLOPs (Pareto front)", PARETO)]


def _pareto_axes(ax, sweep: SweepRuns, flops: pd.Series, metric: str) -> None:
    low, high = sweep.interval(metric)
    data = pd.DataFrame({"x": flops, "y": sweep.metric(metric), "label": sweep.frame["label"], "low": low,
                         "high": high}).dropna(subset=["x", "y", "label"])
    front = pareto_front(data["x"].to_numpy(), data["y"].to_numpy(), maximize=not lower_is_better(metric))
    interval_bars(ax, data["x"], data["low"], data["high"], color="tab:gray", label="95 % interval")
    ax.scatter(data["x"][~front], data["y"][~front], color="tab:gray", label="trial", zorder=2)
    line = data[front].sort_values("x")
    ax.step(line["x"], line["y"], where="post", color="tab:red", alpha=0.6)
    ax.scatter(line["x"], line["y"], color="tab:red", zorder=3, label="Pareto front")
    for _, row in line.iterrows():  # name the front only: the table has every trial
        ax.annotate(row["label"], (row["x"], row["y"]), fontsize=7, xytext=(5, -10), textcoords="offset points")
    if len(data) and data["x"].min() > 0 and data["x"].max() / data["x"].min() >= 10:
        ax.set_xscale("log")
    ax.set(xlabel="training compute (FLOPs)", ylabel=metric_unit(metric), title=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
