"""One sweep trial, the Ray Tune function trainable: pretrain on Ray Train, evaluate, report.

Runbook (what :func:`run_trial` does inside its Tune trial actor)::

    1. find this trial's MLflow child run by tag (oskar.trial_id) under the sweep's parent run;
       FINISHED or KILLED already (the sweep was interrupted after the trial ended)? report its
       metrics again and stop: a trial trains and evaluates once;
    2. build the trial config: sweep base + resolved paths + the sampled point (ValueError → the
       trial errors and its child run is FAILED with the message);
    3. create the child run (or reuse the interrupted one, first re-reporting its last early-stopping
       value to Tune: ``report_last_signal``): params = flattened config, tags
       oskar.role=trial / oskar.sweep / oskar.trial_id / oskar.swept_params, metrics
       flops_per_step and train_flops (oskar_ray.tune.flops);
    4. ``ray_trainer.pretrain`` with Ray's ``TuneReportCallback`` in the trainer's RunConfig: every
       worker report (log / probe / checkpoint steps) becomes a Tune result the scheduler may stop (or pause) on.
       The Ray Train run is ``train.output_dir/<trial id>``: a resumed trial continues from its
       last checkpoint;
    5. ``oskar_ray.eval.evaluate_full`` in-process on the final checkpoint (``eval.tasks``),
       ``eval/<task>/<metric>`` logged onto the child run; the run is FINISHED;
    6. ``ray.tune.report`` of the final metrics (step, flops, eval/*).

The trial never marks its own run FAILED: a trial stopped early by the scheduler is
killed mid-training and may die with an exception, racing the driver. The
driver's :class:`oskar_ray.tune.results.SweepCallback` owns those outcomes:
FINISHED with ``oskar.trial_status=early_stopped`` (KILLED in sweeps logged before) or FAILED with Tune's error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..tracking import client_for, end_run, log_metrics, log_params, set_tags
from .flops import flops_per_step
from .spec import SweepSpec, trial_overrides

#: run tags the report and the resume logic rely on
ROLE, SWEEP, TRIAL_ID, SWEPT, STATUS = "oskar.role", "oskar.sweep", "oskar.trial_id", "oskar.swept_params", \
    "oskar.trial_status"
#: the training step whose weights the run's eval/* metrics measure (a stopped trial: where it stopped)
EVALUATED_AT = "oskar.evaluated_at_step"
#: the step of the last result the scheduler saw before stopping the trial
STOPPED_AT = "oskar.stopped_at_step"
#: wall seconds Tune counted for the trial (``time_total_s``: its attempts, pauses excluded; for a completed
#: trial its evaluation included) and of its downstream evaluation
TRIAL_S, EVAL_S = "time/trial_s", "time/eval_s"


@dataclass
class TrialSetup:
    """What every trial of one sweep shares (passed with ``tune.with_parameters``)."""

    spec: SweepSpec
    #: resolved per sweep by the driver: absolute data path, tracking URI/experiment, train dir, threads
    base_overrides: list[str]
    parent_run_id: str
    tracking_uri: str
    experiment_id: str


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    client = client_for(setup.tracking_uri)
    existing = find_trial_run(client, setup.experiment_id, setup.parent_run_id, trial_id)
    if existing is not None and existing.info.status in ("FINISHED", "KILLED"):
        # evaluated (or stopped by the scheduler; KILLED in older sweeps) before the sweep was interrupted:
        # report it again, do not retrain
        tune.report(final_metrics(existing))
        return
    overrides = trial_overrides(setup.spec, config)
    try:
        cfg = setup.spec.base_config(setup.base_overrides + overrides)
    except ValueError as err:
        run_id = existing.info.run_id if existing else _bare_run(client, setup, trial_id, config)
        end_run(client, run_id, error=f"invalid trial config: {err}")
        raise
    run_id = _reuse(client, existing) if existing else _create(cfg, setup, trial_id, config)
    if existing:
        report_last_signal(client, run_id, setup.spec.scheduler.metric)
    metrics = train_and_evaluate(cfg, run_id, trial_id)
    end_run(client, run_id)
    tune.report(metrics)


def train_and_evaluate(cfg, run_id: str, trial_id: str) -> dict[str, float]:
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..eval.api import evaluate_full
    from ..train.ray_trainer import pretrain

    client = client_for(cfg.tracking.uri)
    _limit_data_cpus(cfg)
    result = pretrain(cfg, run_name=trial_id, run_id=run_id, callbacks=[TuneReportCallback()], finish=False,
                      log_weights=False)
    if result.checkpoint is None:
        raise RuntimeError(f"trial {trial_id}: pretraining produced no checkpoint")
    trained = time.perf_counter()
    # an error from here on reaches the driver, whose SweepCallback marks the run FAILED with it
    evaluated = evaluate_full(result.checkpoint, cfg.data.path, cfg.eval.tasks, cfg, log=True, run_id=run_id,
                              progress=False)
    log_metrics(client, run_id, {EVAL_S: time.perf_counter() - trained}, step=cfg.train.steps)
    set_tags(client, run_id, {STATUS: "completed", EVALUATED_AT: str(cfg.train.steps)})
    flops = flops_per_step(cfg)
    return {"step": cfg.train.steps, "flops_per_step": flops, "train_flops": flops * cfg.train.steps,
            **{k: v for k, v in result.metrics.items() if k.startswith(("loss", "probe/"))}, **evaluated.metrics}


def _limit_data_cpus(cfg) -> None:
    """Unless ``data.max_cpus`` says otherwise, cap this trial's Ray Data preprocessing at
    ``ray_runtime.DATA_TASKS`` tasks in flight (measured: no data wait after the first batch, 2 trials on 2 busy
    cores; see ``ray_runtime.budget_data``); ``pretrain`` applies it."""
    from ..data.pipeline import task_cpus
    from ..ray_runtime import DATA_TASKS

    if not cfg.data.max_cpus:
        cfg.data.max_cpus = DATA_TASKS * task_cpus(cfg)  # an encoded split's decode tasks take a whole CPU


def report_last_signal(client, run_id: str, signal: str) -> None:
    """A restarted trial (unpaused, or its sweep resumed) first reports the last early-stopping value it
    logged: the scheduler (rebuilt empty by ``Tuner.restore``) ranks it at that rung again instead of
    letting it train to the next report first."""
    from ray import tune

    history = client.get_metric_history(run_id, signal)
    if history:
        last = max(history, key=lambda m: m.step)
        tune.report({"step": last.step, signal: last.value})


def final_metrics(run) -> dict[str, float]:
    """What a finished (or early-stopped) trial reports to Tune, rebuilt from its MLflow run."""
    metrics = run.data.metrics
    keep = ("eval/", "loss", "probe/", "flops_per_step", "train_flops")
    out = {k: v for k, v in metrics.items() if k.startswith(keep)}
    trained_out = run.data.tags.get(STATUS, "completed" if run.info.status == "FINISHED" else "") == "completed"
    steps = metrics.get("steps_trained") or (run.data.params.get("train.steps") if trained_out else None)
    out["step"] = int(float(steps)) if steps else 0
    return out


def find_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str):
    """This trial's child run, if one exists (the newest, should an old crash have left two)."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`{TRIAL_ID}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def trial_tags(setup: TrialSetup, trial_id: str, config: dict[str, Any]) -> dict[str, str]:
    return {ROLE: "trial", SWEEP: setup.spec.name, TRIAL_ID: trial_id, SWEPT: ",".join(setup.spec.swept_keys()),
            "oskar.trial_point": ", ".join(f"{k}={v}" for k, v in config.items())}


def run_name(trial_id: str, config: dict[str, Any]) -> str:
    """``<trial id> input_tokens=64 target_tokens=32``: readable in the MLflow run list."""
    return " ".join([trial_id, *(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in config.items())])


def _create(cfg, setup: TrialSetup, trial_id: str, config: dict[str, Any]) -> str:
    from ..tracking import start_run

    client, run_id = start_run(cfg, run_name=run_name(trial_id, config), parent_run_id=setup.parent_run_id,
                               extra_tags={**trial_tags(setup, trial_id, config), STATUS: "running"})
    flops = flops_per_step(cfg)
    log_metrics(client, run_id, {"flops_per_step": flops, "train_flops": flops * cfg.train.steps}, step=0)
    return run_id


def _reuse(client, run) -> str:
    """An interrupted trial continues in its own child run: no duplicate runs on resume."""
    run_id = run.info.run_id
    client.update_run(run_id, status="RUNNING")
    if "error" in run.data.tags:
        client.delete_tag(run_id, "error")
    set_tags(client, run_id, {STATUS: "running"})
    return run_id


def _bare_run(client, setup: TrialSetup, trial_id: str, config: dict[str, Any]) -> str:
    """A child run for a trial whose config does not even load: its point as params, for the record."""
    tags = {**trial_tags(setup, trial_id, config), STATUS: "error", "mlflow.parentRunId": setup.parent_run_id}
    run = client.create_run(setup.experiment_id, run_name=run_name(trial_id, config), tags=tags)
    log_params(client, run.info.run_id, config)
    return run.info.run_id
