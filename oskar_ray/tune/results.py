"""What a sweep leaves behind: per-trial rows, MLflow bookkeeping, the report, the console summary.

* :class:`SweepCallback` (Tune callback, in the driver): one console line per
  trial event; ends the child run of a trial the scheduler stopped ``FINISHED`` — it was stopped by
  design, it did not fail — with tags ``oskar.trial_status=early_stopped``, ``oskar.stopped_at_step``,
  ``oskar.stop_reason`` (the scheduler) and metrics ``steps_trained``, actual ``train_flops``, and hands it
  to the sweep's :class:`~.stopped_trials.StoppedTrialEvaluator`; a failed trial ends ``FAILED`` with the error.
* :func:`refresh_from_runs`: each row takes its run's outcome, late ``eval/*`` metrics, time split and
  evaluation errors (MLflow is the record).
* :func:`summarize`: the Tune ``ResultGrid`` as :class:`TrialRow` s.
* :func:`log_sweep_results`: counts, total compute, the time split, the best trial, and as artifacts
  ``trials.csv``, ``scheduler_decisions.csv`` and ``selected_trial.json`` on the parent run.
* :func:`write_report`: ``oskar_ray.report.build_report`` (the comparison
  dashboard) when installed, logged under ``report/`` on the parent run.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..metric_names import headline_metrics, interval_keys, is_interval
from ..tracking import client_for, end_run, log_metrics, set_tags
from .flops import flops_per_step
from .spec import SweepSpec, trial_overrides
from .stopped_trials import EVAL_ERROR, StoppedTrialEvaluator, live_evaluator
from .trial import EVAL_S, EVALUATED_AT, STATUS, STOPPED_AT, TRIAL_S, find_trial_run


@dataclass
class TrialRow:
    trial_id: str
    point: dict[str, Any]
    status: str  # completed | early_stopped | error
    steps: int
    flops_per_step: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    #: the step whose weights ``eval/*`` measure (-1: not evaluated)
    evaluated_at: int = -1
    #: wall seconds of its pretraining (Tune's time for the trial less its evaluation) and its evaluation
    pretrain_s: float = math.nan
    eval_s: float = math.nan

    @property
    def train_flops(self) -> float:
        return self.steps * self.flops_per_step


@dataclass
class SweepOutcome:
    spec: SweepSpec
    experiment_dir: Path
    parent_run_id: str
    tracking_uri: str
    trials: list[TrialRow]
    best: TrialRow | None
    report: Path | None
    seconds: float
    experiment_id: str = ""


#: ``oskar.stop_reason`` of a trial each scheduler kind stopped before its last step
STOP_REASONS = {"sha": "successive_halving", "asha": "asha"}


class SweepCallback(Callback):
    """Console progress and child-run status for trials the trainable itself cannot close."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, signal: str,
                 scheduler: str = "asha"):
        self.uri, self.experiment_id, self.parent, self.signal = tracking_uri, experiment_id, parent_run_id, signal
        self.stop_reason = STOP_REASONS.get(scheduler, scheduler)

    @property
    def evaluator(self) -> StoppedTrialEvaluator | None:
        """Evaluates each trial the scheduler stops, at its last checkpoint, while the others train on."""
        return live_evaluator(self.parent)

    def on_step_end(self, iteration, trials, **info):
        if self.evaluator is not None:
            self.evaluator.pump(sum(t.status == "RUNNING" for t in trials))

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"[{trial.trial_id}] started: {_point(trial.config)}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.signal in result and not any(k.startswith("eval/") for k in result):
            loss = f" loss={result['loss']:.4f}" if "loss" in result else " (re-reported after a restart)"
            print(f"[{trial.trial_id}] step {result.get('step')}: {self.signal}={result[self.signal]:.3f}{loss}",
                  flush=True)

    def on_trial_save(self, iteration, trials, trial, **info):
        """Tune saves a trial only to pause it (synchronous halving): it waits for the rung."""
        step = (trial.last_result or {}).get("step")
        print(f"[{trial.trial_id}] paused at step {step}: waiting for the other trials to reach it", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        """Completed = evaluated; a trial Tune ended without its eval metrics was stopped by the scheduler."""
        client = client_for(self.uri)
        run = find_trial_run(client, self.experiment_id, self.parent, trial.trial_id)
        last = trial.last_result or {}
        step = int(last.get("step", 0))
        if run is None:
            return
        flops = run.data.metrics.get("flops_per_step", math.nan)
        # a trial re-reported by a resumed sweep comes back with a fresh, small time_total_s: keep the larger
        seconds = max(float(last.get("time_total_s", 0.0)), run.data.metrics.get(TRIAL_S, 0.0))
        log_metrics(client, run.info.run_id, {"steps_trained": step, "train_flops": flops * step, TRIAL_S: seconds},
                    step=step)
        if run.data.tags.get(STATUS) == "completed":
            print(f"[{trial.trial_id}] completed ({step} steps, evaluated)", flush=True)
            return
        # a re-reported trial of a resumed sweep keeps the reason it was stopped for, whatever schedules now
        reason = run.data.tags.get("oskar.stop_reason", self.stop_reason)
        set_tags(client, run.info.run_id, {STATUS: "early_stopped", STOPPED_AT: str(step),
                                           "oskar.stop_reason": reason})
        if run.data.tags.get("error"):
            client.delete_tag(run.info.run_id, "error")  # the dying trial's own exception, not a failure
        client.set_terminated(run.info.run_id, status="FINISHED")
        print(f"[{trial.trial_id}] stopped early by the scheduler at step {step}", flush=True)
        if self.evaluator is not None and EVALUATED_AT not in run.data.tags:
            self.evaluator.submit(trial.trial_id, run.info.run_id, step)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _first_line(trial.get_error())
        client = client_for(self.uri)
        run = find_trial_run(client, self.experiment_id, self.parent, trial.trial_id)
        if run is not None and run.info.status != "FINISHED":
            end_run(client, run.info.run_id, error=error)
            set_tags(client, run.info.run_id, {STATUS: "error"})
        print(f"[{trial.trial_id}] ERROR: {error}", flush=True)


def _first_line(error: Any) -> str:
    text = str(error or "unknown error").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Tune wraps the trainable's exception; its last line names it
    return lines[-1][:500] if lines else text[:500]


def _point(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def summarize(grid, spec: SweepSpec, base_overrides: list[str]) -> list[TrialRow]:
    """One row per trial of a Tune ``ResultGrid``, in trial order."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        point = {k: v for k, v in (result.config or {}).items()}
        if result.error:
            status = "error"
        elif any(k.startswith("eval/") for k in metrics):
            status = "completed"
        else:
            status = "early_stopped"
        try:
            flops = flops_per_step(spec.base_config(base_overrides + trial_overrides(spec, point)))
        except ValueError:
            flops = math.nan
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append(TrialRow(trial_id, point, status, int(metrics.get("step", 0)), flops, numeric,
                             _first_line(result.error) if result.error else ""))
    return sorted(rows, key=lambda r: r.trial_id)


def refresh_from_runs(rows: list[TrialRow], client, experiment_id: str, parent_run_id: str) -> dict:
    """MLflow is the record: each row takes its run's outcome tag and the ``eval/*`` metrics logged after Tune
    last heard of it (a stopped trial's downstream evaluation), and ``evaluated_at_step``. Returns the runs found,
    by trial id (the decisions and the summary read them again)."""
    runs = {row.trial_id: find_trial_run(client, experiment_id, parent_run_id, row.trial_id) for row in rows}
    for row in rows:
        run = runs[row.trial_id]
        if run is None:
            continue
        status = run.data.tags.get(STATUS)
        if status in ("completed", "early_stopped") and row.status != "error":
            row.status = status
        row.metrics.update({k: v for k, v in run.data.metrics.items() if k.startswith("eval/")})
        if EVALUATED_AT in run.data.tags:
            row.evaluated_at = int(run.data.tags[EVALUATED_AT])
        row.eval_s = run.data.metrics.get(EVAL_S, math.nan)
        # a completed trial's Tune time includes its in-trial evaluation; a stopped trial's evaluation came after
        in_trial = row.eval_s if status == "completed" and not math.isnan(row.eval_s) else 0.0
        trained = run.data.metrics.get(TRIAL_S, math.nan) - in_trial
        row.pretrain_s = trained if math.isnan(trained) else max(0.0, trained)
        failed = [f"evaluation: {run.data.tags[EVAL_ERROR]}"] if EVAL_ERROR in run.data.tags else []
        failed += [f"eval {t}: {run.data.tags.get(f'eval.{t}.error', '')}"
                   for t in run.data.tags.get("eval.failed_tasks", "").split(",") if t]
        row.error = "; ".join(filter(None, [row.error, *failed]))
    return runs


def rows_frame(rows: list[TrialRow], spec: SweepSpec, every_metric: bool = True):
    """One row per trial: point, outcome, compute, the step evaluated at, the selection / scheduler metrics and
    (``every_metric``) every ``eval/*`` metric any trial has — else one headline metric per task."""
    import pandas as pd

    evaluated = sorted({k for r in rows for k in r.metrics if k.startswith("eval/") and not is_interval(k)})
    shown = evaluated if every_metric else headline_metrics(evaluated, limit=len(evaluated))
    # the selection metric's 95 % interval beside it: whether the best trial's lead is more than noise
    ends = [k for k in interval_keys(spec.select.metric) if any(k in r.metrics for r in rows)]
    selected = [spec.select.metric, *ends]
    keep = list(dict.fromkeys([*selected, *shown, spec.scheduler.metric, "loss"]))
    return pd.DataFrame([{"trial_id": r.trial_id, **r.point, "status": r.status, "steps": r.steps,
                          "evaluated_at": r.evaluated_at if r.evaluated_at >= 0 else None,
                          "flops_per_step": r.flops_per_step, "train_flops": r.train_flops,
                          **{k: r.metrics.get(k, math.nan) for k in keep}, "error": r.error} for r in rows])


def log_sweep_results(client, parent_run_id: str, spec: SweepSpec, rows: list[TrialRow], best: TrialRow | None,
                      exp_dir: Path, seconds: float, decisions) -> None:
    """Counts, compute, time split and the best trial as metrics and tags; ``trials.csv`` (every trial, every
    eval metric), ``scheduler_decisions.csv`` (:mod:`.decisions`) and ``selected_trial.json`` as artifacts."""
    counts = {s: sum(r.status == s for r in rows) for s in ("completed", "early_stopped", "error")}
    metrics = {"sweep/trials": len(rows), **{f"sweep/{k}": v for k, v in counts.items()}, "sweep/wall_s": seconds,
               "sweep/train_flops": sum(r.train_flops for r in rows if not math.isnan(r.flops_per_step)),
               **{f"sweep/{k}": v for k, v in time_split(rows).items()}}
    tags = {}
    if best is not None:
        metrics[f"best/{spec.select.metric}"] = best.metrics[spec.select.metric]
        run = find_trial_run(client, client.get_run(parent_run_id).info.experiment_id, parent_run_id, best.trial_id)
        tags = {"oskar.best_trial_id": best.trial_id, "oskar.best_point": _point(best.point),
                "oskar.best_run_id": run.info.run_id if run else ""}
    log_metrics(client, parent_run_id, metrics, step=0)
    set_tags(client, parent_run_id, {"oskar.experiment_dir": str(exp_dir), **tags})
    selection = {"metric": spec.select.metric, "mode": spec.select.mode, "among": "trials trained to the end",
                 **({"trial_id": best.trial_id, "run_id": tags["oskar.best_run_id"], "point": best.point,
                     "value": best.metrics[spec.select.metric]} if best is not None else {"trial_id": None})}
    with tempfile.TemporaryDirectory() as tmp:
        rows_frame(rows, spec).to_csv(Path(tmp) / "trials.csv", index=False)
        decisions.to_csv(Path(tmp) / "scheduler_decisions.csv", index=False)
        (Path(tmp) / "selected_trial.json").write_text(json.dumps(selection, indent=2, default=str))
        for name in ("trials.csv", "scheduler_decisions.csv", "selected_trial.json"):
            client.log_artifact(parent_run_id, str(Path(tmp) / name))


def time_split(rows: list[TrialRow]) -> dict[str, float]:
    """Seconds of pretraining and of downstream evaluation summed over the trials (they run side by side)."""
    return {"pretrain_s": sum(r.pretrain_s for r in rows if not math.isnan(r.pretrain_s)),
            "eval_s": sum(r.eval_s for r in rows if not math.isnan(r.eval_s))}


def write_report(spec: SweepSpec, setup, exp_dir: Path) -> Path | None:
    """The comparison report (``oskar report``) for this sweep, logged on the parent run."""
    from ..report import build_report

    try:
        html = Path(build_report(spec.mlflow_experiment, exp_dir / "report", tracking_uri=setup.tracking_uri,
                                 parent_run_id=setup.parent_run_id, metric=spec.select.metric))
    except Exception as err:  # the sweep's results stand without the report; say why it is missing
        print(f"warning: the report failed ({type(err).__name__}: {err}); the runs are in MLflow", flush=True)
        set_tags(client_for(setup.tracking_uri), setup.parent_run_id, {"oskar.report_error": str(err)})
        return None
    client_for(setup.tracking_uri).log_artifacts(setup.parent_run_id, str(html.parent), artifact_path="report")
    return html


def mlflow_ui_command(uri: str, experiment_id: str = "") -> str:
    """How to look at the sweep: the server command and the link to its runs table. MLflow 3.x's UI opens an
    experiment in its GenAI view until the browser is switched to "Model training"; ``workflowType`` in the
    link selects the runs table directly."""
    runs = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}{runs} (a tracking server is already serving the UI)"
    return f"mlflow ui --backend-store-uri {uri}" + (f"   then open http://127.0.0.1:5000{runs}" if runs else "")


def print_summary(outcome: SweepOutcome) -> None:
    spec, rows = outcome.spec, outcome.trials
    counts = {s: sum(r.status == s for r in rows) for s in ("completed", "early_stopped", "error")}
    split = time_split(rows)
    print(f"\nsweep {spec.name}: {len(rows)} trials ({counts['completed']} completed, {counts['early_stopped']} "
          f"stopped early, {counts['error']} errored) in {outcome.seconds:.0f} s; summed over the trials (they run "
          f"side by side): pretraining {split['pretrain_s']:.0f} s, evaluation {split['eval_s']:.0f} s", flush=True)
    frame = rows_frame(rows, spec, every_metric=False).drop(columns=["error", "flops_per_step"])
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    for row in rows:
        if row.error:
            print(f"  {row.trial_id} error: {row.error}", flush=True)
    if outcome.best is not None:
        b = outcome.best
        print(f"best trial {b.trial_id}: {_point(b.point)}  {spec.select.metric} = "
              f"{b.metrics[spec.select.metric]:.4f}", flush=True)
    else:
        print(f"no completed trial reported {spec.select.metric}", flush=True)
    print(f"report: {outcome.report if outcome.report else '(not built)'}", flush=True)
    print(f"sweep directory: {outcome.experiment_dir}", flush=True)
    print(f"compare the trials (experiment {spec.mlflow_experiment}, parent run {outcome.parent_run_id}):\n  "
          f"{mlflow_ui_command(outcome.tracking_uri, outcome.experiment_id)}", flush=True)
