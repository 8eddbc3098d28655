"""Launch OSKAR pretraining on Ray Train (local cluster by default, any cluster by address).

Runbook::

    oskar pretrain --config experiments/configs/tiny.yaml            # local Ray, built-in benchmark
    oskar pretrain --config ... --set train.num_workers=2            # DDP over 2 workers
    oskar pretrain --config ... --resume runs/<name>/checkpoint_...  # continue a run (same MLflow run)
    RAY_ADDRESS=auto oskar pretrain --config experiments/configs/base.yaml   # on a `ray up` cluster

The driver (this module) resolves the data (synthesising the built-in
benchmark when ``data.path`` is empty), creates the MLflow run, builds the
Ray Data pipeline and a ``TorchTrainer`` whose workers run
``worker_loop.train_loop_per_worker``, then records the outcome: FINISHED with
artifacts (resolved config, final weights, loss curves) or FAILED with the
error. ``FailureConfig(max_failures=train.max_failures)`` restarts workers
from the last checkpoint; ``CheckpointConfig`` keeps ``train.keep_checkpoints``.

``build_trainer`` is the one place a ``TorchTrainer`` is made: ``oskar
pretrain`` fits it directly, a Ray Tune sweep trial (``oskar_ray.tune.trial``)
calls :func:`pretrain` with its own MLflow child run and Ray's
``TuneReportCallback`` so every worker report reaches Tune.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import relay, storage
from ..config import OskarConfig, config_yaml, save_config
from ..data.pipeline import stream_block_mb, stream_memory_mb, task_cpus
from ..data.preprocess import rows_without_modalities
from ..data.resolve import resolve_data
from ..data.store import split_info
from ..modalities import carried_modalities
from ..ray_runtime import DATA_BLOCK_MB, budget_data, check_workers_fit, init_ray, prestart_train_coordinator
from ..tracking import client_for, end_run, log_loss_curve, log_metrics, set_tags, start_run, tracking_uri
from .checkpoint import WEIGHTS, latest_checkpoint, read_state
from .step import RunStopped
from .timeline import Timeline

#: beyond this many epochs per stream the worker simply re-iterates the shard
MAX_STREAM_EPOCHS = 64
#: epoch e of a run is shuffled, augmented and masked with seed ``train.seed + EPOCH_SEED_STRIDE * e``
EPOCH_SEED_STRIDE = 1_000_003
#: the epoch a resumed run restarts in gets ``RESUME_SEED_STRIDE * start step`` added: a fresh order
RESUME_SEED_STRIDE = 7_919


@dataclass
class PretrainResult:
    run_id: str
    checkpoint: str | None
    metrics: dict
    run_dir: str


def pretrain(cfg: OskarConfig, *, resume: str | None = None, fail_at_step: int | None = None,
             run_name: str = "", run_id: str | None = None, callbacks: list | None = None,
             finish: bool = True, log_weights: bool = True,
             resume_changes: dict | None = None) -> PretrainResult:
    """Run (or resume) a pretraining; returns the MLflow run id and final checkpoint path.

    ``run_id``: train into this existing MLflow run (a sweep trial's child run)
    instead of creating one; ``callbacks``: Ray Train ``UserCallback``s (e.g.
    ``TuneReportCallback``); ``finish=False``: the caller owns the run's status
    (a sweep trial evaluates next, and its driver records stops and failures:
    a trial killed by ASHA must not race it with a FAILED of its own);
    ``log_weights=False`` skips the weights artifact (the checkpoint stays
    under ``train.output_dir``); ``resume_changes``: what a resume changed of the
    checkpoint's config (``train/resume.py``), recorded on the run as tag ``resume.changes``.
    """
    clock = Timeline()
    cfg = resolve_data(cfg)
    clock.mark("resolve_data")
    name = run_name or cfg.tracking.run_name or time.strftime("pretrain-%Y%m%d-%H%M%S")
    uri = tracking_uri(cfg)
    with ThreadPoolExecutor(1) as pool:
        # the MLflow run opens while Ray starts (seconds each), unless MLflow is reached through Ray (the relay)
        opening = None if relay.wanted(cfg.tracking.relay, uri) else \
            pool.submit(_open_run, cfg, name, resume, run_id, resume_changes)
        try:
            start_ray(cfg)
            clock.mark("ray_init")
            relay.start(uri, cfg.tracking.relay)
            client, run_id = opening.result() if opening else _open_run(cfg, name, resume, run_id, resume_changes)
        except BaseException as err:  # e.g. a data budget the cluster cannot give: the opened run says why
            if opening is not None and finish:
                with contextlib.suppress(Exception):  # the run may not have opened: Ray's error is the one to see
                    end_run(*opening.result(), error=f"{type(err).__name__}: {err}")
            raise
    clock.mark("tracking")
    try:
        trainer = build_trainer(cfg, name, run_id, resume, fail_at_step, callbacks)
        clock.mark("datasets")
        trainer.train_loop_config["launched_at"] = clock.last  # the workers' clock starts at fit(), not before
        result = trainer.fit()
    except BaseException as err:
        if finish:
            end_run(client, run_id, error=f"{type(err).__name__}: {err}")
        raise
    # a non-finite loss or fatal collapse ends the loop cleanly (no retry); rank 0 tags the run
    error = client.get_run(run_id).data.tags.get("error")
    if error:
        if finish:
            end_run(client, run_id, error=error)
        raise RunStopped(error, run_id)
    checkpoint = storage.to_uri(result.checkpoint.filesystem, result.checkpoint.path) if result.checkpoint else None
    _note_wind_down(clock, result.metrics or {})
    _log_artifacts(client, run_id, cfg, checkpoint if log_weights else None)
    clock.mark("artifacts")
    log_metrics(client, run_id, clock.durations(), step=cfg.train.steps)
    if finish:
        end_run(client, run_id)
    return PretrainResult(run_id, checkpoint, dict(result.metrics or {}),
                          storage.join(storage.resolve(cfg.train.output_dir), name))


def start_ray(cfg: OskarConfig) -> None:
    """Ray for one run of ``cfg``: the local (or joined) runtime, its worker group checked against the cluster,
    and the data budget its datasets will carry (so build them after this)."""
    init_ray()
    prestart_train_coordinator()
    check_workers_fit(cfg.train.num_workers, cfg.train.cpus_per_worker, cfg.train.use_gpu)
    need = task_cpus(cfg)
    if 0 < cfg.data.max_cpus < need:  # Ray Data would wait forever for a task it can never schedule
        raise ValueError(f"data.max_cpus={cfg.data.max_cpus} is below the {need} CPUs one preprocessing task of "
                         f"split {cfg.data.train_split!r} reserves (data.cpus_per_task / decode_cpus_per_task)")
    # before the datasets: they carry this context
    block_mb = stream_block_mb(cfg, DATA_BLOCK_MB)
    budget_data(cfg.data.max_cpus, stream_memory_mb(cfg, block_mb), explicit=bool(cfg.data.max_memory_mb),
                block_mb=block_mb)


def _open_run(cfg: OskarConfig, name: str, resume: str | None, run_id: str | None,
              resume_changes: dict | None) -> tuple[object, str]:
    """The run's MLflow client and run id (created, or the resumed / given one), with its start-up tags."""
    run_id = run_id or _run_id(cfg, resume, name)
    client = client_for(tracking_uri(cfg))
    if resume_changes:
        from .resume import describe

        set_tags(client, run_id, {"resume.changes": describe(resume_changes)[:5000]})
    _note_rows_without_modalities(cfg, client, run_id)
    return client, run_id


def _note_wind_down(clock: Timeline, metrics: dict) -> None:
    """The workers' stages (from the last report's ``time/*`` metrics) on the driver's clock, then
    ``wind_down``: from the last step to ``fit()`` returning (the final checkpoint, Ray Train's shutdown)."""
    worker = {k: v for k, v in metrics.items() if k.startswith("time/")}
    if not worker:
        clock.mark("workers")
        return
    clock.extend(worker)
    clock.mark("wind_down")


def _note_rows_without_modalities(cfg: OskarConfig, client, run_id: str) -> None:
    """Rows that carry none of the enabled modalities are not trained on: counted, tagged, printed."""
    skipped, total = rows_without_modalities(cfg.data.path, cfg.data.train_split, cfg.enabled_modalities)
    if skipped:
        note = (f"{skipped} of {total} rows of split {cfg.data.train_split!r} carry none of the enabled "
                f"modalities {cfg.enabled_modalities}: not trained on")
        print(f"note: {note}", flush=True)
        set_tags(client, run_id, {"data.rows_without_modalities": note})


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

    from .worker_loop import train_loop_per_worker

    t = cfg.train
    # a local directory, or object storage that every node reaches ($OSKAR_STORAGE, s3://...)
    root = storage.resolve(t.output_dir)
    run_dir = storage.join(root, name)
    start_step = _start_step(run_dir, resume)
    loop_config = {"cfg": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri(cfg),
                   "resume": storage.resolve(resume) if resume else None, "fail_at_step": fail_at_step,
                   "fail_marker": storage.join(run_dir, ".injected_failure"), "stream_start_step": start_step,
                   # an added modality registered in this process only (a test, a notebook) travels with the loop
                   "modalities": carried_modalities(cfg.modalities)}
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, "config.yaml"), config_yaml(cfg))
    if start_step:
        note = stream_epochs(cfg, split_info(cfg.data.path, cfg.data.train_split)["samples"], start_step)[1]
        set_tags(client_for(tracking_uri(cfg)), run_id, {"data.stream": note})
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
        datasets={"train": training_stream(cfg, start_step)},
        # one worker reads the whole stream: no split, so no SplitCoordinator actor between Ray Data and the worker
        # (its process start and per-batch calls: the first batch 5.5-6.0 -> 0.9-1.8 s after the model is built,
        # the 40-step tiny run ~5 s shorter; the executor runs in the worker, paced like the coordinator's was)
        dataset_config=ray.train.DataConfig(datasets_to_split=[] if t.num_workers == 1 else "all"),
    )
    return trainer


def _start_step(run_dir: str, resume: str | None) -> int:
    """Where the run continues: the ``--resume`` checkpoint's step, else the newest checkpoint Ray Train will
    restore from the run directory (a sweep trial restarted after a pause), else 0."""
    if resume:
        return read_state(storage.resolve(resume)).step
    found = latest_checkpoint(run_dir)
    return found[1] if found else 0


def training_stream(cfg: OskarConfig, start_step: int = 0):
    """All the epochs a run (still) needs as one Ray Data stream.

    Re-iterating a dataset per epoch restarts Ray Data's executor (seconds of
    idle workers each time); one dataset over every epoch's read units streams
    straight through (``data/pipeline.py``), and each epoch gets its own seed, so
    block order, augmentation and token-budget masks differ from epoch to epoch.

    No spare epoch beyond what the steps need. An epoch yields at least
    ``samples - batch_size`` usable rows (each worker drops one partial batch);
    should a run still outlive the stream (a restart, uneven shards), the
    worker re-iterates its shard.

    A run continued from a checkpoint at ``start_step`` (``--resume``, a sweep
    trial restarted after a pause) does not replay the samples it already saw:
    see :func:`stream_epochs`.
    """
    from ..data.pipeline import build_dataset

    samples = split_info(cfg.data.path, cfg.data.train_split)["samples"]
    seeds, _ = stream_epochs(cfg, samples, start_step)
    return build_dataset(cfg, cfg.data.train_split, seed=seeds)


def stream_epochs(cfg: OskarConfig, samples: int, start_step: int = 0) -> tuple[list[int], str]:
    """The seeds of the epochs a run streams from ``start_step`` on, and a note saying so.

    From step 0: epochs 0, 1, ... seeded ``train.seed + 1_000_003 * e``. From a later step: the epoch that
    step falls in again, but in a fresh order (its seed salted with the step: the rest of that epoch is not
    the part already trained on, and it is reproducible), then the following epochs with their usual seeds.
    """
    batch = cfg.train.batch_size
    usable = max(samples - batch, 1)
    first = start_step * batch // usable
    remaining = max(cfg.train.steps - start_step, 1)
    count = min(max(1, math.ceil(remaining * batch / usable)), MAX_STREAM_EPOCHS)
    seeds = [cfg.train.seed + EPOCH_SEED_STRIDE * e for e in range(first, first + count)]
    if start_step == 0:
        return seeds, f"epochs 0-{count - 1} from the start"
    seeds[0] += RESUME_SEED_STRIDE * start_step
    return seeds, (f"resumed at step {start_step}: epoch {first} in a fresh order (seed {seeds[0]}), then "
                   f"epochs {first + 1}-{first + count - 1}" if count > 1 else
                   f"resumed at step {start_step}: epoch {first} in a fresh order (seed {seeds[0]})")


def _log_artifacts(client, run_id: str, cfg: OskarConfig, checkpoint: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(save_config(cfg, Path(tmp) / "config.yaml")))
        log_loss_curve(client, run_id, Path(tmp) / "loss_curve.png")
    weights = storage.join(checkpoint, WEIGHTS) if checkpoint else None
    if weights and storage.is_file(weights):
        client.log_artifact(run_id, storage.local_file(weights), artifact_path="weights")
