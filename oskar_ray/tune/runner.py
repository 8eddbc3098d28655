"""The sweep driver: parent MLflow run, Ray Tune ``Tuner`` (or ``Tuner.restore``), scheduler, summary, report.

Runbook::

    from oskar_ray.tune import load_spec, run_sweep
    outcome = run_sweep(load_spec("experiments/configs/sweeps/token_budget.yaml", profile="smoke"))
    outcome.best            # the best completed trial (select.metric), or None
    run_sweep(spec, resume="latest")   # or the experiment directory printed at the start

Layout: ``<storage_path>/<name>-<time>/`` is the Tune experiment (Tune's own
state, ``oskar_sweep.json`` with the parent run id and the resolved spec,
``train/<trial id>/`` the Ray Train runs and checkpoints, ``report/``). One
MLflow parent run per sweep (tags ``oskar.role=sweep``, ``oskar.sweep``,
``oskar.swept_params``; params ``sweep.*``; the best trial; the report and a
``trials.csv`` summary as artifacts), one child run per trial (``trial.py``).

Resume: ``Tuner.restore`` continues unfinished trials (each from its Ray Train
checkpoint) and never re-runs finished ones; a trial finished in MLflow but
not yet in Tune's saved state re-reports its metrics without training again.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ..tracking import client_for, ensure_experiment, git_sha, log_params, versions
from .decisions import scheduler_decisions
from .results import (
    SweepCallback,
    SweepOutcome,
    TrialRow,
    log_sweep_results,
    print_summary,
    refresh_from_runs,
    summarize,
    write_report,
)
from .schedulers import make_scheduler
from .spec import SweepSpec, spec_from_dict, trial_count, tune_space, validate_points
from .stopped_trials import StoppedTrialEvaluator, register_evaluator
from .trial import ROLE, SWEEP, SWEPT, TrialSetup, run_trial
from .watchdog import StallWatchdog

STATE_FILE = "oskar_sweep.json"
#: Tune saves its experiment state at least this often (s): what an interrupted sweep resumes from
SAVE_EVERY_S = 10


def run_sweep(spec: SweepSpec, *, resume: str | None = None, report: bool = True) -> SweepOutcome:
    """Run (or resume) a sweep end to end; prints the best trial, the report and the mlflow ui command."""
    from .. import relay
    from ..ray_runtime import configure_environment, init_ray
    from .cluster import configure_tune_driver

    started = time.perf_counter()
    configure_environment()
    configure_tune_driver(SAVE_EVERY_S)
    exp_dir = find_experiment(spec, resume) if resume else None
    state = json.loads((exp_dir / STATE_FILE).read_text()) if exp_dir else None
    if state:
        spec = spec_from_dict({k: v for k, v in state["spec"].items() if k != "profile"}, state["spec"]["profile"])
    else:
        n_points = validate_points(spec)
        exp_dir = Path(spec.storage_path).resolve() / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"sweep {spec.name}: {n_points} grid point(s) x {spec.num_samples} sample(s); {exp_dir}", flush=True)
    import ray

    own_cluster = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    # trials interleave: the sweep callback prints one line each
    init_ray(log_to_driver=False, for_sweep=True, trial_slots=_trial_slots(spec) if own_cluster else 0,
             concurrent_trials=max_concurrent(spec, spec.base_config()) if own_cluster else 1)
    setup, state = _setup(spec, exp_dir, state)
    # trials and their workers may run on nodes that cannot reach a head-local store
    relay.start(setup.tracking_uri, spec.base_config(setup.base_overrides).tracking.relay)
    evaluator = _stopped_trial_evaluator(spec, setup)
    tuner = _tuner(spec, setup, exp_dir, state, restoring=resume is not None, evaluator=evaluator)
    grid = tuner.fit()
    client = client_for(setup.tracking_uri)
    evaluator.catch_up(client, setup.experiment_id, setup.parent_run_id)
    evaluator.drain()
    if own_cluster:
        warn_if_resources_held()
    rows = summarize(grid, spec, setup.base_overrides)
    runs = refresh_from_runs(rows, client, setup.experiment_id, setup.parent_run_id)
    outcome = _finish(spec, setup, exp_dir, rows, runs, report, time.perf_counter() - started)
    print_summary(outcome)
    return outcome


def _stopped_trial_evaluator(spec: SweepSpec, setup: TrialSetup) -> StoppedTrialEvaluator:
    """Evaluations of stopped trials share the trials' slots: as many at once as trials may run, less those
    training (at least one)."""
    cfg = spec.base_config(setup.base_overrides)
    return StoppedTrialEvaluator(cfg.train.output_dir, cfg.eval.tasks, setup.tracking_uri, max_concurrent(spec, cfg))


def warn_if_resources_held() -> None:
    """After the last trial every CPU of the sweep's own local cluster should be free again (a shared
    cluster's other jobs hold some); say so when a killed trial's placement group was not released."""
    from .cluster import cpus_still_held

    held = cpus_still_held()
    if held > 1e-6:
        print(f"warning: {held:g} CPU(s) are still reserved after the sweep: the placement groups of trials "
              f"the scheduler stopped were not released (Ray Train's PlacementGroupCleaner needs the dashboard's state "
              f"API; see oskar_ray.ray_runtime.init_ray)", flush=True)


def find_experiment(spec: SweepSpec, resume: str) -> Path:
    """``resume``: an experiment directory, or "latest" (newest ``<name>-*`` under storage_path)."""
    if resume != "latest":
        path = Path(resume).resolve()
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume {resume}: no {STATE_FILE} there (not a sweep directory)")
        return path
    root = Path(spec.storage_path).resolve()
    found = sorted(p for p in root.glob(f"{spec.name}-*") if (p / STATE_FILE).is_file())
    if not found:
        raise FileNotFoundError(f"--resume: no {spec.name} sweep under {root} to resume")
    return found[-1]


def _setup(spec: SweepSpec, exp_dir: Path, state: dict | None) -> tuple[TrialSetup, dict]:
    """The trials' shared setup: from the saved state on resume, else resolved now and saved."""
    state = state or _new_state(spec, exp_dir)
    client = client_for(state["tracking_uri"])
    client.update_run(state["parent_run_id"], status="RUNNING")
    experiment_id = client.get_run(state["parent_run_id"]).info.experiment_id
    return TrialSetup(spec, state["base_overrides"], state["parent_run_id"], state["tracking_uri"],
                      experiment_id), state


def _new_state(spec: SweepSpec, exp_dir: Path) -> dict:
    """Resolve data (synthesised if absent), tracking URI and paths once, in the driver: trials run
    in their own working directories, possibly on other nodes. Creates the parent run."""
    from ..data.resolve import resolve_data
    from ..tracking import tracking_uri

    base = resolve_data(spec.base_config())
    check_eval_tasks(spec, base)
    check_scheduler_signal(spec, base)
    uri = tracking_uri(base)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    overrides = [f"data.path={base.data.path}", f"tracking.uri={uri}",
                 f"tracking.experiment={spec.mlflow_experiment}", f"train.output_dir={_train_dir(exp_dir)}"]
    if base.train.threads == 0:
        # trials share nodes: each trial's torch threads = its workers' CPU reservation, not the node's cores
        overrides.append(f"train.threads={max(1, round(base.train.cpus_per_worker))}")
    exp_dir.mkdir(parents=True, exist_ok=True)
    state = {"spec": spec.to_dict(), "base_overrides": overrides, "parent_run_id": _parent_run(spec, base, uri),
             "tracking_uri": uri, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (exp_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def check_eval_tasks(spec: SweepSpec, cfg) -> None:
    """Refuse, before any trial trains, eval tasks the dataset cannot serve (e.g. VQA without QA annotations)."""
    from ..eval.requirements import unservable

    problems = unservable(cfg.eval.tasks, cfg.data.path, cfg)
    if problems:
        servable = [t for t in cfg.eval.tasks if t not in problems]
        raise ValueError(f"sweep {spec.name}: the dataset {cfg.data.path} cannot serve eval task(s) "
                         + "; ".join(f"{task!r}: {why}" for task, why in problems.items())
                         + f". eval.tasks={cfg.eval.tasks}: drop them with --set eval.tasks=[{','.join(servable)}]")


def check_scheduler_signal(spec: SweepSpec, cfg) -> None:
    """Refuse, before any trial trains, a scheduler that ranks on the online probe when the dataset cannot give
    one (no labelled held-out clips): it would never stop a trial, silently running the whole grid."""
    from ..metric_names import PROBE_PREFIX
    from ..probes.online import unavailable_reason

    s = spec.scheduler
    if s.kind == "fifo" or not s.metric.startswith(PROBE_PREFIX):
        return
    why = unavailable_reason(cfg)
    if why:
        raise ValueError(f"sweep {spec.name}: scheduler.kind={s.kind} ranks trials on {s.metric}, but the online "
                         f"probe cannot run: {why}. Run every trial to the end (--scheduler fifo) or set the sweep "
                         f"YAML's scheduler.metric to one every trial reports (e.g. loss, mode: min)")


def _train_dir(exp_dir: Path) -> str:
    """Where the trials' Ray Train runs (checkpoints) go: beside the sweep on a laptop, on the
    cluster's object storage (``$OSKAR_STORAGE``) when set — trials run on any node."""
    from .. import storage

    shared = storage.storage_root()
    return storage.join(shared, "sweeps", exp_dir.name, "train") if shared else str(exp_dir / "train")


def _parent_run(spec: SweepSpec, base, uri: str) -> str:
    import tempfile

    import yaml

    from ..config import save_config
    from ..tracking import data_fingerprint

    client = client_for(uri)
    experiment_id = ensure_experiment(client, spec.mlflow_experiment)
    tags = {ROLE: "sweep", SWEEP: spec.name, SWEPT: ",".join(spec.swept_keys()), "git_sha": git_sha(),
            "data_fingerprint": data_fingerprint(base), **versions()}
    run = client.create_run(experiment_id, run_name=f"sweep {spec.name} {time.strftime('%m-%d %H:%M')}", tags=tags)
    params = {f"sweep.{k}": v for k, v in spec.to_dict().items() if k not in ("space", "scheduler", "select")}
    params.update({f"sweep.space.{k}": v for k, v in spec.space.items()})
    params.update({f"sweep.scheduler.{k}": v for k, v in spec.to_dict()["scheduler"].items()})
    params.update({f"sweep.select.{k}": v for k, v in spec.to_dict()["select"].items()})
    log_params(client, run.info.run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        client.log_artifact(run.info.run_id, str(Path(tmp) / "sweep.yaml"))
        client.log_artifact(run.info.run_id, str(save_config(base, Path(tmp) / "base_config.yaml")))
    return run.info.run_id


def max_concurrent(spec: SweepSpec, cfg) -> int:
    """Trials at once: what the cluster (or this machine's cores) fits, capped by ``spec.max_concurrent``."""
    from .cluster import concurrent_trials

    t = cfg.train
    return concurrent_trials(spec.trial_cpu, t.num_workers, t.cpus_per_worker, cfg.data.cpus_per_task, t.use_gpu,
                             t.threads, cap=spec.max_concurrent)


def _trial_slots(spec: SweepSpec) -> int:
    """Running trials a local cluster allows, as a resource: synchronous halving pauses trials, and a
    concurrency limit in the search generator would count paused trials as running (deadlock)."""
    return max_concurrent(spec, spec.base_config()) if spec.scheduler.kind == "sha" else 0


def _trial_resources(spec: SweepSpec) -> dict[str, float]:
    from .cluster import trial_resources

    resources, note = trial_resources(spec.trial_cpu, slotted=spec.scheduler.kind == "sha")
    if note:
        print(f"sweep {spec.name}: synchronous halving: {note}", flush=True)
    return resources


def _tuner(spec: SweepSpec, setup: TrialSetup, exp_dir: Path, state: dict, restoring: bool,
           evaluator: StoppedTrialEvaluator):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), _trial_resources(spec))
    # Tune pickles the callbacks with the experiment and restores those copies: they find this evaluator by the
    # parent run id (stopped_trials.live_evaluator), never through a pickled reference
    register_evaluator(setup.parent_run_id, evaluator)
    if restoring:
        print(f"resuming sweep {spec.name} from {exp_dir}", flush=True)
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True)
    cfg = spec.base_config(setup.base_overrides)
    concurrent = max_concurrent(spec, cfg)
    print(f"sweep {spec.name}: up to {concurrent} trial(s) at once; MLflow parent run {setup.parent_run_id}",
          flush=True)
    space, points = tune_space(spec)
    # Tune ignores max_concurrent_trials for a search generator: the generator limits itself — except under
    # synchronous halving, where paused trials would count as running: there the trial-slot resource limits
    limit = 0 if spec.scheduler.kind == "sha" else concurrent
    search = (BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed, max_concurrent=limit)
              if points else None)
    num_trials = trial_count(spec, points)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(num_samples=len(points) or spec.num_samples, search_alg=search,
                                    scheduler=make_scheduler(spec, cfg, num_trials),
                                    max_concurrent_trials=None if search or not limit else limit,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=0,
                                  callbacks=[SweepCallback(setup.tracking_uri, setup.experiment_id,
                                                           setup.parent_run_id, spec.scheduler.metric,
                                                           spec.scheduler.kind),
                                             StallWatchdog()],
                                  failure_config=tune.FailureConfig(max_failures=0)))


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish(spec: SweepSpec, setup: TrialSetup, exp_dir: Path, rows: list[TrialRow], runs: dict, report: bool,
            seconds: float) -> SweepOutcome:
    client = client_for(setup.tracking_uri)
    best = best_trial(rows, spec)
    decisions = scheduler_decisions(client, spec, rows, runs, spec.base_config(setup.base_overrides).train.steps)
    log_sweep_results(client, setup.parent_run_id, spec, rows, best, exp_dir, seconds, decisions)
    html = write_report(spec, setup, exp_dir) if report else None
    client.set_terminated(setup.parent_run_id, status="FINISHED")
    return SweepOutcome(spec, exp_dir, setup.parent_run_id, setup.tracking_uri, rows, best, html, seconds,
                        setup.experiment_id)


def best_trial(rows: list[TrialRow], spec: SweepSpec) -> TrialRow | None:
    metric, sign = spec.select.metric, 1.0 if spec.select.mode == "max" else -1.0
    scored = [r for r in rows if r.status == "completed" and not math.isnan(r.metrics.get(metric, math.nan))]
    return max(scored, key=lambda r: sign * r.metrics[metric]) if scored else None
