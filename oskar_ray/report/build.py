"""``build_report``: MLflow runs of one sweep → ``report.html`` + PNGs + ``trials.csv`` in ``out_dir``.

Steps: load the runs (:mod:`.runs`), choose the metrics (every ``eval/...``
metric some run has, less the ``_ci95_lo / _hi`` interval ends logged beside them, which the table and the
plots show with their metric; the ranking metric is ``metric`` or the first headline
accuracy, action recognition first), draw (:mod:`.sweep_plots`,
:mod:`.curves`, :mod:`.lowshot_plot`), write the page (:mod:`.html`). A plot that fails is
replaced by a note on the page rather than failing the report: the report
runs at the end of a sweep and must not lose it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .curves import curve_plots, pareto_plot, training_flops
from .figures import Plot
from .html import best_run, render, within_noise
from .labels import headline_metrics, is_interval, lower_is_better
from .lowshot_plot import label_efficiency_plot
from .runs import SweepRuns, load_sweep, resolve_uri
from .sweep_plots import metric_plots

log = logging.getLogger(__name__)

HTML_NAME = "report.html"


def build_report(experiment: str, out_dir: str | Path, tracking_uri: str | None = None,
                 parent_run_id: str | None = None, metric: str | None = None) -> Path:
    """Write the sweep report of ``experiment`` into ``out_dir``; returns the HTML path.

    ``tracking_uri``: explicit → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<cwd>/mlflow.db``.
    ``parent_run_id``: a sweep parent run (default: the experiment's latest one).
    ``metric``: the metric that ranks trials (default: the first headline accuracy).
    Raises ``ValueError`` / ``FileNotFoundError`` naming the experiment and URI when there is nothing to report.
    """
    sweep = load_sweep(experiment, resolve_uri(tracking_uri), parent_run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a rebuilt report must not embed stale figures
        old.unlink()
    eval_metrics = [m for m in sweep.metric_keys("eval/") if not is_interval(m)]
    headline = headline_metrics(eval_metrics)
    primary = _primary_metric(sweep, metric, headline, eval_metrics)
    plots: list[Plot] = []
    plots += _safely(sweep, "metric plots", metric_plots, sweep, eval_metrics, headline, out)
    plots += _safely(sweep, "training curves", curve_plots, sweep, out)
    compared = ([primary] if primary else []) + [m for m in headline if m != primary]
    plots += _safely(sweep, "compute plot", pareto_plot, sweep, compared[:4], out)
    plots += _safely(sweep, "label-efficiency figure", label_efficiency_plot, sweep, primary, out)
    flops = training_flops(sweep)
    sweep.frame.assign(train_flops_total=flops, within_noise_of_best=within_noise(sweep, primary)).to_csv(
        out / "trials.csv", index=False)
    page = out / HTML_NAME
    page.write_text(render(sweep, plots, eval_metrics, primary, flops), encoding="utf-8")
    return page


def _primary_metric(sweep: SweepRuns, metric: str | None, headline: list[str], eval_metrics: list[str]) -> str | None:
    if metric:
        if metric not in sweep.metric_keys():
            raise ValueError(f"metric {metric!r} is not logged by any run of experiment {sweep.experiment!r} "
                             f"(eval metrics: {', '.join(eval_metrics) or 'none'})")
        return metric
    if headline:
        return headline[0]
    higher = [m for m in eval_metrics if not lower_is_better(m) and not m.startswith("eval/health/")]
    return higher[0] if higher else None


def _safely(sweep: SweepRuns, what: str, fn, *args) -> list[Plot]:
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - one broken figure must not lose the sweep's report
        log.exception("report: %s failed", what)
        sweep.notes.append(f"{what} could not be drawn: {type(err).__name__}: {err}")
        return []


__all__ = ["build_report", "best_run", "HTML_NAME"]
