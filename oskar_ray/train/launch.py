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
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import OskarConfig, save_config
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
        if not (Path(cfg.data.path) / "manifest.json").is_file() and "://" not in cfg.data.path:
            raise FileNotFoundError(f"data.path={cfg.data.path}: no manifest.json there "
                                    f"(create one with `oskar data synth --out DIR`)")
        cfg.data.path = str(Path(cfg.data.path).resolve()) if "://" not in cfg.data.path else cfg.data.path
        return cfg
    from ..data.synth import SynthSpec, generate

    video, skeleton = cfg.modalities["video"], cfg.modalities["skeleton"]
    name = f"synthaction-{video.frames}x{video.height}x{video.width}-n{cfg.data.synth_samples}"
    root = (Path("data") / name).resolve()
    if not (root / "manifest.json").is_file():
        print(f"built-in benchmark not found: synthesising {cfg.data.synth_samples} samples into {root}",
              flush=True)
        spec = SynthSpec(samples=cfg.data.synth_samples, seed=0, frames=video.frames, height=video.height,
                         width=video.width, joints=skeleton.joints)
        generate(spec, root)
    cfg.data.path = str(root)
    return cfg


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # a local cluster without the dashboard saves ~0.5 GB on a laptop
    kwargs = {} if address else {"include_dashboard": False}
    env = {k: os.environ[k] for k in QUIET_ENV}
    ray.init(address=address, logging_level="WARNING", runtime_env={"env_vars": env}, **kwargs)


def pretrain(cfg: OskarConfig, *, resume: str | None = None, fail_at_step: int | None = None,
             run_name: str = "") -> PretrainResult:
    """Run (or resume) a pretraining; returns the MLflow run id and final checkpoint path."""
    configure_environment()
    cfg = resolve_data(cfg)
    init_ray()
    name = run_name or cfg.tracking.run_name or time.strftime("pretrain-%Y%m%d-%H%M%S")
    run_id = _run_id(cfg, resume, name)
    client = client_for(tracking_uri(cfg))
    try:
        result = _fit(cfg, name, run_id, resume, fail_at_step)
    except BaseException as err:
        end_run(client, run_id, error=f"{type(err).__name__}: {err}")
        raise
    # a non-finite loss or fatal collapse ends the loop cleanly (no retry); rank 0 tags the run
    error = client.get_run(run_id).data.tags.get("error")
    if error:
        end_run(client, run_id, error=error)
        raise RuntimeError(f"pretraining stopped: {error} (MLflow run {run_id} marked FAILED)")
    checkpoint = result.checkpoint.path if result.checkpoint else None
    _log_artifacts(client, run_id, cfg, checkpoint)
    end_run(client, run_id)
    return PretrainResult(run_id, checkpoint, dict(result.metrics or {}), str(Path(cfg.train.output_dir) / name))


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


def _fit(cfg: OskarConfig, name: str, run_id: str, resume: str | None, fail_at_step: int | None):
    import ray.train
    from ray.train.torch import TorchTrainer

    from .worker import train_loop_per_worker

    t = cfg.train
    storage = Path(t.output_dir).resolve()
    loop_config = {"cfg": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri(cfg),
                   "resume": str(Path(resume).resolve()) if resume else None, "fail_at_step": fail_at_step,
                   "fail_marker": str(storage / name / ".injected_failure")}
    (storage / name).mkdir(parents=True, exist_ok=True)
    save_config(cfg, storage / name / "config.yaml")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures)),
        datasets={"train": training_stream(cfg)},
    )
    return trainer.fit()


def training_stream(cfg: OskarConfig):
    """All the epochs a run needs as one Ray Data stream.

    Re-iterating a dataset per epoch restarts Ray Data's executor (seconds of
    idle workers each time); a union of per-epoch datasets streams straight
    through, and each epoch gets its own seed, so block order, augmentation and
    token-budget masks differ from epoch to epoch.
    """
    from ..data.pipeline import build_dataset
    from ..data.store import split_info

    samples = split_info(cfg.data.path, cfg.data.train_split)["samples"]
    epochs = max(1, math.ceil(cfg.train.steps * cfg.train.batch_size / max(samples, 1))) + 1
    epochs = min(epochs, MAX_UNION_EPOCHS)
    streams = [build_dataset(cfg, cfg.data.train_split, seed=cfg.train.seed + 1_000_003 * e) for e in range(epochs)]
    return streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]


def _log_artifacts(client, run_id: str, cfg: OskarConfig, checkpoint: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(save_config(cfg, Path(tmp) / "config.yaml")))
        log_loss_curve(client, run_id, Path(tmp) / "loss_curve.png")
    if checkpoint and (Path(checkpoint) / WEIGHTS).is_file():
        client.log_artifact(run_id, str(Path(checkpoint) / WEIGHTS), artifact_path="weights")
