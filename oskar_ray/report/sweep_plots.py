"""Downstream metrics vs the swept parameters: one PNG per metric.

* one swept param, numeric → every trial as a point, the mean per value as a line;
* one swept param, categorical → bars (mean, ± std when repeated) with the trials
  as points, plus grouped bars of the accuracy-type headline metrics per value;
* two swept params on a grid (≤ 12 values each) → a heatmap, cells annotated,
  missing cells (failed/stopped trials) marked ``n/a``; off-grid (random
  search over continuous values) → a scatter coloured by the metric;
* three or more → the metric vs each param in turn (marginals), and a heatmap of each headline metric (one
  per task) over every pair of them, averaged over the other params.

Where the eval logged a metric's 95 % interval (``<metric>_ci95_lo / _hi``), each trial's point carries it as a
bar (lines, bars, marginals, grouped bars), and a heatmap cell of one trial shows it under the value: two
trials whose intervals overlap are not told apart by the test set.

Every trial that ran has its downstream metrics (a trial the scheduler stopped is evaluated where it stopped,
``oskar_ray.tune.stopped_trials``); only a failed trial leaves a cell ``n/a``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps

from .figures import Plot, interval_bars, new_figure, save
from .labels import fmt_interval, fmt_value, is_interval, metric_unit, short_names
from .runs import SweepRuns, as_values

SECTION = "Downstream metrics vs swept parameters"
_MAX_GRID = 12


def metric_plots(sweep: SweepRuns, metrics: list[str], headline: list[str], out_dir: Path) -> list[Plot]:
    swept = [k for k in sweep.swept if sweep.param(k).notna().any()]
    # label-efficiency points are drawn together (report/lowshot_plot.py), not as one plot per point
    metrics = [m for m in metrics if not is_interval(m) and not m.startswith("eval/lowshot/")
               and sweep.metric(m).notna().any()]
    if not swept or not metrics:
        return []
    if len(swept) == 1:
        values, numeric = as_values(sweep.param(swept[0]))
        plots = [_one_param(sweep, m, swept[0], values, numeric, out_dir) for m in metrics]
        if not numeric:
            plots += _grouped_bars(sweep, headline, swept[0], values, out_dir)
        return plots
    if len(swept) == 2:
        return [_two_params(sweep, m, swept, out_dir) for m in metrics]
    pairs = list(itertools.combinations(swept, 2))
    return [_marginals(sweep, m, swept, out_dir) for m in metrics] + \
        [_two_params(sweep, m, list(pair), out_dir) for m in headline for pair in pairs]


def _one_param(sweep, metric, key, values, numeric, out_dir) -> Plot:
    fig, (ax,) = new_figure(1, width=6.5)
    _draw_1d(ax, values, sweep.metric(metric), numeric, sweep.interval(metric))
    name = short_names([key])[key]
    ax.set(xlabel=_param_label(key, numeric), ylabel=metric_unit(metric), title=f"{metric}\nvs {name}")
    return save(fig, out_dir, f"metric_{metric}_vs_{key}", f"{metric} vs {key}", SECTION)


def _draw_1d(ax, values: pd.Series, y: pd.Series, numeric: bool,
             interval: tuple[pd.Series, pd.Series] | None = None) -> None:
    low, high = interval if interval is not None else (pd.Series(np.nan, index=y.index),) * 2
    data = pd.DataFrame({"x": values, "y": y, "low": low, "high": high}).dropna(subset=["x", "y"])
    if data.empty:
        ax.text(0.5, 0.5, "no finished trial has this metric", ha="center", va="center", transform=ax.transAxes)
        return
    if numeric:
        mean = data.groupby("x")["y"].mean().sort_index()
        ax.plot(mean.index, mean.values, "-", color="tab:blue", lw=2, label="mean per value")
        ax.scatter(data["x"], data["y"], color="tab:orange", zorder=3, label="trial")
        interval_bars(ax, data["x"], data["low"], data["high"], color="tab:orange", label="trial's 95 % interval")
        xs = np.sort(data["x"].unique())
        if xs.min() > 0 and xs.max() / xs.min() >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [fmt_value(float(x)) for x in xs])
    else:
        order = list(pd.unique(data["x"].astype(str)))
        data["pos"] = data["x"].astype(str).map({c: i for i, c in enumerate(order)})
        stats = data.groupby("pos")["y"].agg(["mean", "std"]).reindex(range(len(order)))
        ax.bar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), color="tab:blue", alpha=0.7,
               capsize=4, label="mean (± std)")
        ax.scatter(data["pos"], data["y"], color="tab:orange", zorder=3, label="trial")
        interval_bars(ax, data["pos"], data["low"], data["high"], color="tab:orange",
                      label="trial's 95 % interval")
        ax.set_xticks(range(len(order)), order, rotation=20 if max(map(len, order)) > 8 else 0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _grouped_bars(sweep, headline, key, values, out_dir) -> list[Plot]:
    """Groups = accuracy-type headline metrics (same 0–1 scale), one bar per param value; where a metric has
    95 % intervals, each trial's value and interval are drawn over its bar."""
    metrics = [m for m in headline if "0–1" in metric_unit(m) and sweep.metric(m).notna().any()]
    if not metrics:
        return []
    order = list(pd.unique(values.dropna().astype(str)))
    fig, (ax,) = new_figure(1, width=max(6.5, 1.6 * len(metrics) * max(1, len(order)) / 2))
    width = 0.8 / max(1, len(order))
    for i, category in enumerate(order):
        mask = values.astype(str) == category
        means = [sweep.metric(m)[mask].mean() for m in metrics]
        centres = np.arange(len(metrics)) + (i - (len(order) - 1) / 2) * width
        ax.bar(centres, means, width, label=category)
        for centre, m in zip(centres, metrics, strict=True):
            if not sweep.has_interval(m):
                continue
            low, high = (end[mask] for end in sweep.interval(m))
            shown = sweep.metric(m)[mask].notna()
            ax.scatter(np.full(int(shown.sum()), centre), sweep.metric(m)[mask][shown], color="black", s=12, zorder=3)
            interval_bars(ax, np.full(int(shown.sum()), centre), low[shown], high[shown], label=None)
    ax.set_xticks(range(len(metrics)), [m.removeprefix("eval/") for m in metrics], rotation=15)
    name = short_names([key])[key]
    ax.set(ylabel="score (fraction, 0–1)", title=f"Headline metrics by {name}")
    ax.legend(title=name, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return [save(fig, out_dir, f"grouped_bars_{key}", f"headline metrics by {key} (grouped bars)", SECTION)]


def _two_params(sweep, metric, swept, out_dir) -> Plot:
    (rows, rows_numeric), (cols, cols_numeric) = (as_values(sweep.param(k)) for k in swept)
    on_grid = rows.nunique() <= _MAX_GRID and cols.nunique() <= _MAX_GRID
    if not on_grid and rows_numeric and cols_numeric:
        return _scatter_2d(sweep, metric, swept, rows, cols, out_dir)
    table = heatmap_table(sweep, metric, swept)
    at = _evaluated_at(sweep).where(sweep.metric(metric).notna())
    low, high = (heatmap_table(sweep, "", swept, values=at, how=how).to_numpy(dtype=float) for how in ("min", "max"))
    row_order, col_order = list(table.index), list(table.columns)
    fig, (ax,) = new_figure(1, width=max(5.5, 1.1 * len(col_order) + 3), height=max(4.0, 0.8 * len(row_order) + 2))
    # trials stopped early are evaluated where they stopped: say at which step(s), when the cells differ
    mixed = at.dropna().nunique() > 1
    _heatmap(fig, ax, table.to_numpy(dtype=float), metric, (low, high) if mixed else None,
             _cell_intervals(sweep, metric, swept))
    ax.set_xticks(range(len(col_order)), [fmt_value(c) for c in col_order])
    ax.set_yticks(range(len(row_order)), [fmt_value(r) for r in row_order])
    names = short_names(swept)
    ax.set(xlabel=_param_label(swept[1], cols_numeric), ylabel=_param_label(swept[0], rows_numeric),
           title=f"{metric}\n{names[swept[0]]} × {names[swept[1]]} (mean over trials per cell)")
    name = f"heatmap_{metric}" if len(sweep.swept) == 2 else f"heatmap_{metric}_{swept[0]}_x_{swept[1]}"
    return save(fig, out_dir, name, f"{metric}: heatmap over {swept[0]} × {swept[1]}", SECTION)


def heatmap_table(sweep: SweepRuns, metric: str, pair: list[str], values: pd.Series | None = None,
                  how: str = "mean") -> pd.DataFrame:
    """``how`` (mean, min, max) of ``metric`` (or of ``values``, one per run) per cell of the ``pair[0]`` x
    ``pair[1]`` grid (rows x columns, sorted); NaN where no trial of that cell has it."""
    (rows, _), (cols, _) = (as_values(sweep.param(k)) for k in pair)
    y = sweep.metric(metric) if values is None else values
    data = pd.DataFrame({"r": rows, "c": cols, "y": y}).dropna(subset=["r", "c"])
    table = data.pivot_table(index="r", columns="c", values="y", aggfunc=how, dropna=False)
    return table.reindex(index=sorted(data["r"].unique(), key=_sort_key),
                         columns=sorted(data["c"].unique(), key=_sort_key))


def _cell_intervals(sweep: SweepRuns, metric: str, pair: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ends of the 95 % interval per heatmap cell that holds one trial (a mean over several has none)."""
    if not sweep.has_interval(metric):
        return None
    count = heatmap_table(sweep, metric, pair, how="count").to_numpy(dtype=float)
    low, high = (heatmap_table(sweep, "", pair, values=end.where(sweep.metric(metric).notna()), how="max")
                 .to_numpy(dtype=float) for end in sweep.interval(metric))
    single = count == 1
    return np.where(single, low, np.nan), np.where(single, high, np.nan)


def _evaluated_at(sweep: SweepRuns) -> pd.Series:
    column = "tags.oskar.evaluated_at_step"
    raw = sweep.frame[column] if column in sweep.frame else pd.Series(None, index=sweep.frame.index, dtype=object)
    return pd.to_numeric(raw, errors="coerce")


def _heatmap(fig, ax, matrix: np.ndarray, metric: str, steps: tuple[np.ndarray, np.ndarray] | None = None,
             intervals: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    shown = np.ma.masked_invalid(matrix)
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(shown, origin="lower", cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=metric_unit(metric))
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), value in np.ndenumerate(matrix):
        text = "n/a" if not np.isfinite(value) else fmt_value(float(value))
        if intervals is not None and np.isfinite(intervals[0][i, j]) and np.isfinite(intervals[1][i, j]):
            text += "\n" + fmt_interval(intervals[0][i, j], intervals[1][i, j])
        if steps is not None and np.isfinite(value) and np.isfinite(steps[0][i, j]):
            low, high = int(steps[0][i, j]), int(steps[1][i, j])
            text += f"\n@ step {low}" if low == high else f"\n@ steps {low}-{high}"
        color = "black" if not np.isfinite(value) or value > middle else "white"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)


def _scatter_2d(sweep, metric, swept, rows, cols, out_dir) -> Plot:
    data = pd.DataFrame({"r": rows, "c": cols, "y": sweep.metric(metric)}).dropna()
    fig, (ax,) = new_figure(1, width=6.5)
    points = ax.scatter(data["c"], data["r"], c=data["y"], cmap="viridis", s=60, edgecolors="black")
    fig.colorbar(points, ax=ax, label=metric_unit(metric))
    ax.set(xlabel=_param_label(swept[1], True), ylabel=_param_label(swept[0], True), title=metric)
    ax.grid(alpha=0.3)
    name = f"scatter_{metric}" if len(sweep.swept) == 2 else f"scatter_{metric}_{swept[0]}_x_{swept[1]}"
    return save(fig, out_dir, name, f"{metric} over {swept[0]} × {swept[1]}", SECTION)


def _marginals(sweep, metric, swept, out_dir) -> Plot:
    fig, axes = new_figure(len(swept), ncols=3, width=4.8, height=3.8)
    names = short_names(swept)
    for ax, key in zip(axes, swept, strict=True):
        values, numeric = as_values(sweep.param(key))
        _draw_1d(ax, values, sweep.metric(metric), numeric, sweep.interval(metric))
        ax.set(xlabel=_param_label(key, numeric), ylabel=metric_unit(metric), title=f"vs {names[key]}")
    fig.suptitle(f"{metric} vs each swept parameter (other parameters vary too)")
    fig.tight_layout()
    return save(fig, out_dir, f"marginals_{metric}", f"{metric} vs each swept parameter", SECTION)


def _param_label(key: str, numeric: bool) -> str:
    unit = " (tokens per sample)" if key.endswith("_tokens") else ""
    return f"{key}{unit}" if numeric else f"{key} (categorical)"


def _sort_key(value):
    return (0, float(value), "") if isinstance(value, (int, float, np.number)) else (1, 0.0, str(value))
