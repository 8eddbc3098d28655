"""Launch OSKAR pretraining on Ray Train (local cluster by default, any cluster by address).

Runbook::

    oskar pretrain --config experiments/configs/tiny.yaml            # local Ray, built-in benchmark
    oskar pretrain --config ... --set train.num_workers=2            # DDP over 2 workers
    oskar pretrain --config ... --resume runs/<name>/checkpoint_...  # continue a run (same MLflow run)
    RAY_ADDRESS=auto oskar pretrain --config experiments/configs/base.yaml   # on a `ray up` cluster

The driver (this module) resolves the data (synthesising the built-in
benchmark when ``data.path`` is empty), creates the MLflow run, builds the
Ray Data pipeline and a ``TorchTrainer`` whose workers run
``worker.train_loop_per_worker``, then records the outcome: FINISHED with
artifacts (resolved config, final weights, loss curves) or FAILED with the
error. ``FailureConfig(max_failures=train.max_failures)`` restarts workers
from the last checkpoint; ``CheckpointConfig`` keeps ``train.keep_checkpoints``.

``build_trainer`` is the one place a ``TorchTrainer`` is made: ``oskar
pretrain`` fits it directly, a Ray Tune sweep trial (``oskar_ray.tune.trial``)
calls :func:`pretrain` with its own MLflow child run and Ray's
``TuneReportCallback`` so every worker report reaches Tune.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import relay, storage
from ..config import OskarConfig, config_yaml, save_config
from ..tracking import client_for, end_run, log_loss_curve, start_run, tracking_uri
from .checkpoint import WEIGHTS, read_state

#: one progress line per log step instead of a wall of Ray internals; override any by exporting it
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0",
             "RAY_DATA_LOG_LEVEL": "WARNING", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
             "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


#: beyond this many epochs per stream the worker simply re-iterates the shard
MAX_UNION_EPOCHS = 64


@dataclass
class PretrainResult:
    run_id: str
    checkpoint: str | None
    metrics: dict
    run_dir: str


def configure_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def resolve_data(cfg: OskarConfig) -> OskarConfig:
    """A copy of ``cfg`` whose ``data.path`` points at a dataset, synthesised if needed."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.path:
        cfg.data.path = storage.resolve(cfg.data.path)
        if not storage.is_file(storage.join(cfg.data.path, "manifest.json")):
            raise FileNotFoundError(f"data.path={cfg.data.path}: no manifest.json there "
                                    f"(create one with `oskar data synth --out DIR`)")
        return cfg
    from ..data.synth import SynthSpec, generate, split_sizes

    video, skeleton = cfg.modalities["video"], cfg.modalities["skeleton"]
    pretrain = cfg.data.synth_pretrain_samples
    name = f"synthaction-{video.frames}x{video.height}x{video.width}-n{cfg.data.synth_samples}" + \
        (f"-p{pretrain}" if pretrain else "")
    root = (Path("data") / name).resolve()
    if not (root / "manifest.json").is_file():
        sizes = split_sizes(cfg.data.synth_samples, pretrain)
        print(f"built-in benchmark not found: synthesising {sum(sizes.values())} clips "
              f"({', '.join(f'{k} {v}' for k, v in sizes.items())}) into {root}", flush=True)
        spec = SynthSpec(samples=cfg.data.synth_samples, pretrain_samples=pretrain, seed=0, frames=video.frames,
                         height=video.height, width=video.width, joints=skeleton.joints)
        generate(spec, root)
    cfg.data.path = str(root)
    shared = storage.storage_root()
    if shared and not storage.is_local(shared):
        # a cluster: workers on other nodes read the benchmark from object storage, not this disk
        cfg.data.path = storage.join(shared, "data", name)
        if not storage.is_file(storage.join(cfg.data.path, "manifest.json")):
            print(f"uploading the built-in benchmark to {cfg.data.path}", flush=True)
            storage.copy(root, cfg.data.path)
    return cfg


def init_ray(log_to_driver: bool = True, *, for_sweep: bool = False, trial_slots: int = 0,
             concurrent_trials: int = 1) -> None:
    """Connect to ``$RAY_ADDRESS`` or start a quiet local Ray (no-op when already connected).

    ``for_sweep``: a local cluster for Ray Tune trials. When ASHA kills a trial,
    only Ray Train's ``PlacementGroupCleaner`` frees its workers' resources, and
    it finds the controller through the dashboard's state API by auto-detecting
    the cluster — which fails as soon as another Ray instance runs on the host
    (``Found multiple active Ray instances``), leaking the trial's CPUs until the
    next trials wait forever. So sweeps start the dashboard, pin the GCS port and
    export this cluster's address to every worker as ``RAY_ADDRESS``; and they
    declare :data:`SWEEP_CPU_FACTOR` logical CPUs per core, because each trial
    reserves CPUs for its driver and trainer and Ray Data would otherwise find
    none left for its read tasks and hang (concurrency is capped by physical
    cores instead, see ``oskar_ray.tune.runner.max_concurrent``). ``trial_slots``:
    that many units of the custom resource :data:`TRIAL_SLOT` on the local
    sweep cluster, one per running trial (a paused trial holds none). ``concurrent_trials`` sizes the local
    raylet's worker start-up (:func:`startup_concurrency`).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}
    # a local cluster without the dashboard saves ~0.5 GB on a laptop
    kwargs: dict = {} if address else {"include_dashboard": False}
    pinned = for_sweep and not address
    if pinned:
        port = _free_port()
        env["RAY_ADDRESS"] = f"{_node_ip()}:{port}"
        kwargs = {"include_dashboard": True, "num_cpus": SWEEP_CPU_FACTOR * (os.cpu_count() or 1)}
        if trial_slots:
            kwargs["resources"] = {TRIAL_SLOT: trial_slots}
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the local head node at start
    runtime_env: dict = {"env_vars": env}
    if kwargs.get("include_dashboard") is False:  # see oskar_ray.ray_quiet
        runtime_env["worker_process_setup_hook"] = "oskar_ray.ray_quiet.silence_placement_group_cleaner"
    sized = not address and STARTUP_CONCURRENCY_ENV not in os.environ
    if sized:  # read by the local raylet at start
        os.environ[STARTUP_CONCURRENCY_ENV] = str(startup_concurrency(concurrent_trials))
    try:
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env,
                 log_to_driver=log_to_driver, **kwargs)
    finally:
        if pinned:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        if sized:
            os.environ.pop(STARTUP_CONCURRENCY_ENV, None)


#: how many worker processes a raylet starts at once: a raylet config (ray_config_def.h) read from the environment
#: as ``RAY_<name>`` — an internal knob, not a public API: a Ray upgrade that drops it brings the warnings back
#: (tests/test_train_ray.py::test_a_local_cluster_sized_for_its_trials_prints_no_worker_startup_warnings fails)
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
#: Python processes one running trial keeps: Ray Train V2's controller, dataset manager, synchronisation,
#: preemption watcher and placement-group cleaner actors, the train worker, the Tune function, Ray Data's split
#: coordinator and its preprocessing tasks, a stopped trial's evaluation (measured: 38 for 2 trials), with room
PROCESSES_PER_TRIAL = 20


def startup_concurrency(concurrent_trials: int) -> int:
    """Worker processes the local raylet may start at once. Its default is the core count (2 on a laptop), and
    the raylet warns each time the live processes pass 4x that ("N PYTHON worker processes have been started
    ... 19x the maximum expected startup concurrency") — which every sweep trial does by design (Ray Train V2
    runs ~8 actors per trial). Sized for the trials that run at once, the warning keeps its meaning: a leak.
    The knob also lets that many processes boot in parallel (they queued before), which a trial's start-up
    does anyway, one actor after another."""
    return max(os.cpu_count() or 1, PROCESSES_PER_TRIAL * max(1, concurrent_trials) // 2)


#: logical CPUs per physical core of a local sweep cluster (see init_ray)
SWEEP_CPU_FACTOR = 2
#: custom resource of a local sweep cluster that caps running trials when paused ones must not count
TRIAL_SLOT = "oskar_trial_slot"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def pretrain(cfg: OskarConfig, *, resume: str | None = None, fail_at_step: int | None = None,
             run_name: str = "", run_id: str | None = None, callbacks: list | None = None,
             finish: bool = True, log_weights: bool = True) -> PretrainResult:
    """Run (or resume) a pretraining; returns the MLflow run id and final checkpoint path.

    ``run_id``: train into this existing MLflow run (a sweep trial's child run)
    instead of creating one; ``callbacks``: Ray Train ``UserCallback``s (e.g.
    ``TuneReportCallback``); ``finish=False``: the caller owns the run's status
    (a sweep trial evaluates next, and its driver records stops and failures:
    a trial killed by ASHA must not race it with a FAILED of its own);
    ``log_weights=False`` skips the weights artifact (the checkpoint stays
    under ``train.output_dir``).
    """
    configure_environment()
    cfg = resolve_data(cfg)
    init_ray()
    relay.start(tracking_uri(cfg), cfg.tracking.relay)
    name = run_name or cfg.tracking.run_name or time.strftime("pretrain-%Y%m%d-%H%M%S")
    run_id = run_id or _run_id(cfg, resume, name)
    client = client_for(tracking_uri(cfg))
    try:
        result = build_trainer(cfg, name, run_id, resume, fail_at_step, callbacks).fit()
    except BaseException as err:
        if finish:
            end_run(client, run_id, error=f"{type(err).__name__}: {err}")
        raise
    # a non-finite loss or fatal collapse ends the loop cleanly (no retry); rank 0 tags the run
    error = client.get_run(run_id).data.tags.get("error")
    if error:
        if finish:
            end_run(client, run_id, error=error)
        raise RuntimeError(f"pretraining stopped: {error} (MLflow run {run_id} marked FAILED)")
    checkpoint = storage.to_uri(result.checkpoint.filesystem, result.checkpoint.path) if result.checkpoint else None
    _log_artifacts(client, run_id, cfg, checkpoint if log_weights else None)
    if finish:
        end_run(client, run_id)
    return PretrainResult(run_id, checkpoint, dict(result.metrics or {}),
                          storage.join(storage.resolve(cfg.train.output_dir), name))


def _run_id(cfg: OskarConfig, resume: str | None, name: str) -> str:
    if resume:
        previous = read_state(resume).run_id
        client = client_for(tracking_uri(cfg))
        if previous and _run_exists(client, previous):
            client.update_run(previous, status="RUNNING")
            if "error" in client.get_run(previous).data.tags:  # a retry of a failed run starts clean
                client.delete_tag(previous, "error")
            return previous
    return start_run(cfg, run_name=name)[1]


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # mlflow raises MlflowException for unknown ids
        return False
    return True


def build_trainer(cfg: OskarConfig, name: str, run_id: str, resume: str | None = None,
                  fail_at_step: int | None = None, callbacks: list | None = None):
    """The ``TorchTrainer`` of one pretraining run, its Ray Train run at ``train.output_dir/<name>``.

    A second trainer with the same name and ``output_dir`` continues from that
    run's last checkpoint (Ray Train V2 restores its checkpoint manager from
    storage): how an interrupted sweep trial resumes.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from .worker import train_loop_per_worker

    t = cfg.train
    # a local directory, or object storage that every node reaches ($OSKAR_STORAGE, s3://...)
    root = storage.resolve(t.output_dir)
    run_dir = storage.join(root, name)
    loop_config = {"cfg": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri(cfg),
                   "resume": storage.resolve(resume) if resume else None, "fail_at_step": fail_at_step,
                   "fail_marker": storage.join(run_dir, ".injected_failure")}
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, "config.yaml"), config_yaml(cfg))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=root,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures), callbacks=list(callbacks or [])),
        datasets={"train": training_stream(cfg)},
    )
    return trainer


def training_stream(cfg: OskarConfig):
    """All the epochs a run needs as one Ray Data stream.

    Re-iterating a dataset per epoch restarts Ray Data's executor (seconds of
    idle workers each time); a union of per-epoch datasets streams straight
    through, and each epoch gets its own seed, so block order, augmentation and
    token-budget masks differ from epoch to epoch.

    No spare epoch: Ray Data starts every unioned stream's reads at once, so
    the first batch waits for all of them (measured on 2 busy cores: 18 s for
    one stream, ~35-50 s for two, ~100 s for six) — a cost each sweep trial
    pays again. An epoch yields at least ``samples - batch_size`` usable rows
    (each worker drops one partial batch); should a run still outlive the
    stream (a restart, uneven shards), the worker re-iterates its shard.
    """
    from ..data.pipeline import build_dataset
    from ..data.store import split_info

    samples = split_info(cfg.data.path, cfg.data.train_split)["samples"]
    usable = max(samples - cfg.train.batch_size, 1)
    epochs = min(max(1, math.ceil(cfg.train.steps * cfg.train.batch_size / usable)), MAX_UNION_EPOCHS)
    streams = [build_dataset(cfg, cfg.data.train_split, seed=cfg.train.seed + 1_000_003 * e) for e in range(epochs)]
    return streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]


def _log_artifacts(client, run_id: str, cfg: OskarConfig, checkpoint: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(save_config(cfg, Path(tmp) / "config.yaml")))
        log_loss_curve(client, run_id, Path(tmp) / "loss_curve.png")
    weights = storage.join(checkpoint, WEIGHTS) if checkpoint else None
    if weights and storage.is_file(weights):
        client.log_artifact(run_id, storage.local_file(weights), artifact_path="weights")
