"""Downstream evaluation of the trials a scheduler stopped early, at the step where each stopped.

Runbook (the sweep driver, :mod:`oskar_ray.tune.runner`, does this)::

    evaluator = StoppedTrialEvaluator(train_dir, tasks, tracking_uri, max_in_flight=1)
    evaluator.submit(trial_id, run_id, stopped_at)   # SweepCallback, the moment the scheduler stops a trial
    evaluator.pump(trials_running)       # every Tune loop step: start queued evaluations as slots free up
    evaluator.catch_up(client, experiment_id, parent_run_id)   # after Tuner.fit: stopped runs still lacking eval/*
    evaluator.drain()                    # wait for all; {trial_id: StoppedEval}

Why: successive halving stops most trials after a few rungs. Left unevaluated, they leave the ablation's
heatmaps and MLflow's compare view empty but for the one survivor. Each stopped trial keeps its Ray Train
checkpoints (``<train.output_dir>/<trial id>/checkpoint_*``); the newest one up to the step the scheduler
stopped it at is evaluated with the trial's own resolved config (saved inside the checkpoint: same tasks,
protocol and seed as the trials that ran to the end) in a Ray task of one CPU, and the ``eval/*`` metrics are
logged onto the trial's child run at that step, with the tag ``oskar.evaluated_at_step``. The evaluations run
while the surviving trials still train: ``max_in_flight`` (the trials a sweep runs at once) slots, each training
trial taking one, at least one evaluation always going. A failed evaluation is recorded on the run
(``oskar.eval_error``) and printed; it does not fail the sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import storage
from ..tracking import client_for, log_metrics, set_tags
from .trial import EVAL_S, EVALUATED_AT, STATUS, STOPPED_AT, TRIAL_ID

#: CPUs each evaluation task reserves, and its torch threads (the probes are single-threaded anyway)
EVAL_CPUS = 1.0
EVAL_ERROR = "oskar.eval_error"


@dataclass
class StoppedEval:
    trial_id: str
    run_id: str
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    #: the whole evaluation's failure ("" = ran); per-task failures are in ``task_errors``
    error: str = ""
    task_errors: dict[str, str] = field(default_factory=dict)


def evaluate_stopped(run_dir: str, stopped_at: int, run_id: str, tracking_uri: str) -> dict:
    """Body of the Ray task: evaluate the newest checkpoint under ``run_dir`` up to step ``stopped_at`` onto MLflow
    run ``run_id``, with the tasks and protocol of the trial's own config (saved in the checkpoint)."""
    import torch

    from ..eval.api import evaluate_full
    from ..train.checkpoint import checkpoint_config, latest_checkpoint

    torch.set_num_threads(max(1, int(EVAL_CPUS)))
    found = latest_checkpoint(run_dir, stopped_at)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at or before step {stopped_at} to evaluate (the trial "
                                f"stopped before its first train.checkpoint_every step, or trained on while Tune "
                                f"stopped it and train.keep_checkpoints rotated that checkpoint out)")
    checkpoint, step = found
    started = time.perf_counter()
    cfg = checkpoint_config(checkpoint)
    result = evaluate_full(checkpoint, cfg.data.path, cfg.eval.tasks, cfg, log=True, run_id=run_id, progress=False)
    client = client_for(tracking_uri)
    log_metrics(client, run_id, {EVAL_S: time.perf_counter() - started}, step=step)
    set_tags(client, run_id, {EVALUATED_AT: str(step)})
    if EVAL_ERROR in client.get_run(run_id).data.tags:  # an earlier attempt failed; this one ran
        client.delete_tag(run_id, EVAL_ERROR)
    return {"step": step, "metrics": result.metrics, "task_errors": result.errors}


class StoppedTrialEvaluator:
    """Queue of stopped trials to evaluate; at most ``max_in_flight`` Ray tasks at once, less the trials training."""

    def __init__(self, train_dir: str, tasks: list[str], tracking_uri: str, max_in_flight: int = 1):
        #: ``tasks`` is what the log lines name; each evaluation runs its trial's own eval.tasks
        self.train_dir, self.tasks, self.uri = train_dir, list(tasks), tracking_uri
        self.max_in_flight = max(1, max_in_flight)
        self.trials_running = 0  # as last reported by pump(): a submit between two loop steps respects it
        self._task = None
        self.queued: list[tuple[str, str, int]] = []
        self.running: dict = {}  # ObjectRef -> (trial_id, run_id, stopped_at)
        self.done: dict[str, StoppedEval] = {}

    def submit(self, trial_id: str, run_id: str, stopped_at: int) -> None:
        known = {q[0] for q in self.queued} | {r[0] for r in self.running.values()} | set(self.done)
        if trial_id not in known:
            self.queued.append((trial_id, run_id, stopped_at))
        self.pump(self.trials_running)

    def pump(self, trials_running: int = 0) -> None:
        """Collect finished evaluations, start queued ones while slots are free (never blocks). A training trial
        takes a slot: at least one evaluation runs beside them, all slots once training is over."""
        import ray

        self.trials_running = trials_running
        if self.running:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
            for ref in ready:
                self._collect(ref)
        if self._task is None:
            self._task = ray.remote(num_cpus=EVAL_CPUS, max_retries=0)(evaluate_stopped)
        while self.queued and len(self.running) < max(1, self.max_in_flight - trials_running):
            trial_id, run_id, stopped_at = self.queued.pop(0)
            ref = self._task.remote(storage.join(self.train_dir, trial_id), stopped_at, run_id, self.uri)
            self.running[ref] = (trial_id, run_id, stopped_at)
            print(f"[{trial_id}] evaluating downstream ({', '.join(self.tasks)}) at its last checkpoint", flush=True)

    def catch_up(self, client, experiment_id: str, parent_run_id: str) -> None:
        """Queue stopped trials of this sweep not evaluated yet (a sweep interrupted while they waited, now
        resumed); one whose evaluation ran — even if every task failed, which its tags record — is not redone."""
        runs = client.search_runs([experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{STATUS}` = 'early_stopped'"))
        for run in runs:
            if EVALUATED_AT not in run.data.tags:
                self.submit(run.data.tags.get(TRIAL_ID, ""), run.info.run_id,
                            int(run.data.tags.get(STOPPED_AT, run.data.metrics.get("steps_trained", 0))))

    def drain(self) -> dict[str, StoppedEval]:
        """Wait for every queued and running evaluation; the outcomes by trial id."""
        import ray

        while self.queued or self.running:
            self.pump(0)
            if self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1)
                self._collect(ready[0])
        return dict(self.done)

    def _collect(self, ref) -> None:
        import ray

        trial_id, run_id, _ = self.running.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - recorded on the trial's run; the sweep goes on
            error = _last_line(err)
            self.done[trial_id] = StoppedEval(trial_id, run_id, error=error)
            set_tags(client_for(self.uri), run_id, {EVAL_ERROR: error})
            print(f"[{trial_id}] downstream evaluation FAILED: {error}", flush=True)
            return
        self.done[trial_id] = StoppedEval(trial_id, run_id, out["step"], out["metrics"], "", out["task_errors"])
        failed = f"; failed tasks: {', '.join(out['task_errors'])}" if out["task_errors"] else ""
        print(f"[{trial_id}] evaluated at step {out['step']} ({len(out['metrics'])} metrics{failed})", flush=True)


def _last_line(error: BaseException) -> str:
    """Ray wraps the task's exception in its traceback; the last line names it."""
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


#: the evaluator of each sweep running in this driver process, by parent run id (see register_evaluator)
_LIVE: dict[str, StoppedTrialEvaluator] = {}


def register_evaluator(parent_run_id: str, evaluator: StoppedTrialEvaluator) -> None:
    """Make ``evaluator`` the one the sweep's callbacks use. Tune pickles its callbacks into the experiment
    state and a resumed sweep runs the unpickled copies, so they look the live evaluator up by id."""
    _LIVE[parent_run_id] = evaluator


def live_evaluator(parent_run_id: str) -> StoppedTrialEvaluator | None:
    return _LIVE.get(parent_run_id)
