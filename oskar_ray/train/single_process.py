"""The single-process pretraining loop: ``oskar pretrain --local``, the tests, the baselines.

Runbook (no Ray)::

    from oskar_ray.config import load_config
    from oskar_ray.train import train
    history = train(load_config("experiments/configs/smoke.yaml", ["train.steps=50"]))   # per-step metrics
    run_id, run_dir = pretrain_local(load_config("experiments/configs/tiny.yaml"))     # oskar pretrain --local
    run_single_process(cfg, Path("runs/local"))    # example stream, weights in the run dir (no MLflow)

``train`` without batches trains on ``Oskar.example_batch`` (structured random
signals) — enough to check that the objective learns. Console: one line per
``train.log_every`` steps (step, loss per modality, samples/s, ETA).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import OskarConfig
from ..model import Oskar
from .step import NonFiniteLossError, RunStopped, build_optimizer, progress_line, seed_everything, train_step

if TYPE_CHECKING:
    from .health_check import HealthMonitor


def example_stream(model: Oskar, batch_size: int, seed: int) -> Iterator[dict]:
    """An endless, deterministic stream of structured example batches."""
    index = 0
    while True:
        yield model.example_batch(batch_size, seed=seed * 1_000_003 + index)
        index += 1


def train(
    cfg: OskarConfig,
    batches: Iterable[dict] | None = None,
    model: Oskar | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[dict[str, float]]:
    """Run ``cfg.train.steps`` steps single-process; returns per-step metrics. ``optimizer``: one over ``model``'s
    parameters (built here when None; pass the model with it)."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = model or Oskar(cfg)
    if optimizer is None:
        optimizer = build_optimizer(model, cfg)
    stream = iter(batches if batches is not None else example_stream(model, cfg.train.batch_size, cfg.train.seed))
    history = []
    for step in range(cfg.train.steps):
        try:
            batch = next(stream)
        except StopIteration:
            break
        metrics = train_step(model, optimizer, batch, step, cfg)
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
    return history


def progress_printer(cfg: OskarConfig, started: float):
    from .health_check import due

    def on_step(step: int, metrics: dict[str, float]) -> None:
        done = step + 1
        if not due(done, cfg.train.log_every, cfg):
            return
        elapsed = time.perf_counter() - started
        rate = done * cfg.train.batch_size / elapsed
        eta = elapsed / done * (cfg.train.steps - done)
        print(progress_line(done, cfg.train.steps, metrics, rate, eta), flush=True)

    return on_step


def run_single_process(cfg: OskarConfig, run_dir: Path, batches: Iterable[dict] | None = None) -> list[dict]:
    seed_everything(cfg.train.seed)
    model = Oskar(cfg)
    source = "built-in example stream" if batches is None else "given batches"
    print(f"pretraining (single process) on {source}; writing to {run_dir}", flush=True)
    history = train(cfg, batches, model=model, on_step=progress_printer(cfg, time.perf_counter()))
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(run_dir / "weights.safetensors")
    print(f"saved {run_dir / 'weights.safetensors'}", flush=True)
    return history


def pretrain_local(cfg: OskarConfig, run_name: str = "") -> tuple[str, Path]:
    """``oskar pretrain --local``: the run ``oskar pretrain`` makes, in this one process and without Ray — the
    same dataset (the built-in benchmark synthesised on first use when ``data.path`` is empty) read row group by
    row group, the same seed and steps, an MLflow run with the losses, ``samples_per_s``, ``time/<stage>_s``, the
    same health check at the same steps (``health_check.py``: RankMe / std on the held-out batch, the collapse
    alarm, fatal when ``eval.collapse_fatal``), the resolved config, the loss curve and the weights (no online
    probe, no optimizer checkpoints). For debugging and for measuring what Ray costs on the same work
    (``experiments/bench_train.py --overhead``). Returns (run id, run dir)."""
    from ..config import save_config
    from ..data.pipeline import iterate_local
    from ..data.resolve import resolve_data
    from ..data.store import split_info
    from ..tracking import end_run, log_loss_curve, log_metrics, start_run
    from .health_check import HealthMonitor
    from .timeline import Timeline

    clock = Timeline()
    cfg = resolve_data(cfg)
    clock.mark("resolve_data")
    samples = split_info(cfg.data.path, cfg.data.train_split)["samples"]
    if samples < cfg.train.batch_size:
        raise ValueError(f"{cfg.data.path}: split {cfg.data.train_split!r} has {samples} samples, fewer than "
                         f"train.batch_size={cfg.train.batch_size}")
    name = run_name or cfg.tracking.run_name or time.strftime("pretrain-local-%Y%m%d-%H%M%S")
    run_dir = Path(cfg.train.output_dir) / name
    save_config(cfg, run_dir / "config.yaml")
    client, run_id = start_run(cfg, run_name=name, extra_tags={"launcher": "local"})
    clock.mark("tracking")
    epochs = -(-cfg.train.steps * cfg.train.batch_size // max(samples - cfg.train.batch_size, 1))
    batches = iterate_local(cfg.data.path, cfg.data.train_split, cfg, cfg.train.batch_size, seed=cfg.train.seed,
                            train=True, epochs=max(epochs, 1), drop_last=True)
    print(f"pretraining (single process) on {cfg.data.path} split {cfg.data.train_split!r}; writing to {run_dir}; "
          f"MLflow run {run_id}", flush=True)
    try:
        seed_everything(cfg.train.seed)  # before the weights are drawn, as the Ray worker does
        model = Oskar(cfg)
        optimizer = build_optimizer(model, cfg)
        clock.mark("model")
        monitor = HealthMonitor.for_run(cfg, model, next(model.parameters()).device)
        clock.mark("monitor")
        history = _train_or_stop(cfg, _timed(batches, clock), model, optimizer, run_id,
                                 _logging(cfg, client, run_id, _checking(cfg, client, run_id, model, monitor)))
        if len(history) < cfg.train.steps:
            raise RuntimeError(f"the stream of split {cfg.data.train_split!r} ended after {len(history)} of "
                               f"{cfg.train.steps} steps")
        clock.mark("steps")
        model.save_weights(run_dir / "weights.safetensors")
        client.log_artifact(run_id, str(run_dir / "config.yaml"))
        log_loss_curve(client, run_id, run_dir / "loss_curve.png")
        client.log_artifact(run_id, str(run_dir / "weights.safetensors"), artifact_path="weights")
        clock.mark("artifacts")
        log_metrics(client, run_id, clock.durations(), step=len(history))
    except BaseException as err:
        end_run(client, run_id, error=err.reason if isinstance(err, RunStopped) else f"{type(err).__name__}: {err}")
        raise
    end_run(client, run_id)
    print(f"saved {run_dir / 'weights.safetensors'} ({clock.summary()})", flush=True)
    return run_id, run_dir


def _train_or_stop(cfg: OskarConfig, batches: Iterator[dict], model: Oskar, optimizer, run_id: str,
                   on_step: Callable[[int, dict[str, float]], None]) -> list[dict[str, float]]:
    """``train``, where a non-finite loss ends the run as the Ray worker ends it: :class:`RunStopped`, the loss's
    message as the run's error tag."""
    try:
        return train(cfg, batches, model=model, optimizer=optimizer, on_step=on_step)
    except NonFiniteLossError as err:
        print(f"stopping: {err}", flush=True)
        raise RunStopped(str(err), run_id) from err


def _timed(batches: Iterator[dict], clock) -> Iterator[dict]:
    """The stream, with the first batch's wait marked as a stage."""
    first = next(batches, None)
    clock.mark("data")
    if first is not None:
        yield first
        yield from batches


def _logging(cfg: OskarConfig, client, run_id: str, check: Callable[[int, dict], str]):
    """At ``train.log_every`` (and the last step): ``check`` adds its metrics, all are logged to MLflow and the
    console line printed; then the run stops if ``check`` said why it must (:class:`RunStopped`). The logged and
    printed ``samples_per_s`` is the window's since the last log step, counting the steps' time only, as the Ray
    worker's is."""
    from ..tracking import log_metrics
    from .health_check import due

    started = time.perf_counter()
    last = [started, 0]  # time and step where the current window of steps started

    def on_step(step: int, metrics: dict[str, float]) -> None:
        done = step + 1
        log_now = due(done, cfg.train.log_every, cfg)
        stop = ""
        if log_now:
            rate = (done - last[1]) * cfg.train.batch_size / max(time.perf_counter() - last[0], 1e-9)
            stop = check(done, metrics)
            log_metrics(client, run_id, {**metrics, "samples_per_s": rate}, step=done)
            eta = (time.perf_counter() - started) / done * (cfg.train.steps - done)
            print(progress_line(done, cfg.train.steps, metrics, rate, eta), flush=True)
        if stop:
            print(f"stopping: {stop}", flush=True)
            raise RunStopped(stop, run_id)
        if log_now:
            last[:] = [time.perf_counter(), done]

    return on_step


def _checking(cfg: OskarConfig, client, run_id: str, model: Oskar,
              monitor: HealthMonitor) -> Callable[[int, dict], str]:
    """The Ray worker's health check at a log step (``worker_loop.py``): due at ``eval.rankme_every`` and the last
    step, its metrics added to the step's, the alarm tagged on the run; returns why the run must stop ("" if it
    goes on): a collapse when ``eval.collapse_fatal``."""
    from ..tracking import set_tags
    from .health_check import alarm_tag, collapse_reason, due

    def check(done: int, metrics: dict[str, float]) -> str:
        if not due(done, cfg.eval.rankme_every, cfg):
            return ""
        metrics.update(monitor.check(model))
        if not metrics["health/collapse_alarm"]:
            return ""
        set_tags(client, run_id, alarm_tag(done))
        return collapse_reason(done) if cfg.eval.collapse_fatal else ""

    return check
