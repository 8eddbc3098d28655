"""The Ray Train worker loop: ``train_step`` under DDP, checkpoints, health, logging.

Runs inside every ``TorchTrainer`` worker (see ``ray_trainer.py``). Rank 0 logs to
MLflow (the run id comes from the driver) and prints one console line per
``train.log_every`` steps. Every rank calls ``ray.train.report`` at the same
steps (it is a collective in Train V2): each log step, each online-probe step
(``eval.online_probe_every``) and each checkpoint step, rank 0 attaching the
checkpoint. Ray passes on rank 0's metrics only (a sweep's
``TuneReportCallback`` forwards them to Tune: the intermediate results ASHA
decides on), so rank 0 alone runs the monitor and the probe.

Restart semantics: on a worker failure Ray restarts the group and
``ray.train.get_checkpoint()`` returns the last reported checkpoint; the loop
restores weights, optimizer, RNG states and the step, so schedules continue
exactly. A non-finite loss is *not* retried: every rank sees the same reduced
loss, reports ``error`` and returns; the driver marks the MLflow run FAILED.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ..config import OskarConfig, config_from_dict
from ..data.preprocess import COUNTERS
from ..modalities import adopt_modalities
from ..model import Oskar, move_batch
from ..probes.online import OnlineProbe
from ..ray_runtime import quiet_train_worker_logs
from ..tracking import client_for, log_metrics, set_tags
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .health_check import HealthMonitor, alarm_tag, collapse_reason, due
from .step import NonFiniteLossError, build_optimizer, progress_line, seed_everything, train_step, unwrap
from .timeline import Timeline


def prepare_ddp(model: Oskar):
    """Ray's DDP wrapping. A batch may lack a modality key (or have no targets for a
    per-modality predictor), leaving those parameters without gradient: DDP must look."""
    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})


def _batches(cfg: OskarConfig, per_worker: int) -> Iterator[dict]:
    """This worker's shard of the launcher's stream (which already spans the run's epochs)."""
    from ..data.pipeline import iter_train_batches

    shard = ray.train.get_dataset_shard("train")
    while True:  # re-iterate only if a run outlives the stream
        yielded = False
        for batch in iter_train_batches(shard, cfg, per_worker, train=True):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError(f"{cfg.data.path}: split {cfg.data.train_split!r} gave no batch of {per_worker} "
                             f"samples per worker (fewer samples than train.batch_size?)")


class WarmStart:
    """An iterator whose first item is fetched in a background thread from construction on, so the wait for
    it (Ray Data's start: reads, preprocessing processes) overlaps whatever the caller does meanwhile."""

    def __init__(self, items: Iterator[dict]):
        self._items, self._first, self._error = items, None, None
        self._thread = threading.Thread(target=self._fetch, name="oskar-first-batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self._items)
        except BaseException as err:  # StopIteration included: re-raised in the caller's thread
            self._error = err

    def __iter__(self) -> WarmStart:
        return self

    def __next__(self) -> dict:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error
            first, self._first = self._first, None
            return first
        return next(self._items)


def _mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def _summed_across_ranks(counted: dict[str, float]) -> dict[str, float]:
    """``data/<counter>`` over every rank's batches (each rank streams its own shard); called by all ranks."""
    if not counted:
        return {}
    keys = sorted(counted)
    total = torch.tensor([counted[k] for k in keys], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        total = total.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(total)
    return {f"data/{k}": float(v) for k, v in zip(keys, total.tolist(), strict=True)}


class _Throughput:
    """Samples/s, tokens/s and the share of step time spent waiting on data, per log window."""

    def __init__(self, cfg: OskarConfig):
        self.samples_per_step = cfg.train.batch_size
        self.tokens_per_sample = cfg.budget.input_tokens + cfg.budget.target_tokens
        self.steps, self.data_wait, self.total = 0, 0.0, 0.0
        #: the data path's per-row counters (undecodable / padded videos), summed over the run on this rank
        self.counted: dict[str, float] = {}

    def count(self, batch: dict) -> dict:
        """Take the data path's counters out of a batch (the model does not read them); returns the batch."""
        for key in COUNTERS:
            if key in batch:
                self.counted[key] = self.counted.get(key, 0.0) + float(batch.pop(key).sum())
        return batch

    def add(self, waited: float, took: float) -> None:
        self.steps, self.data_wait, self.total = self.steps + 1, self.data_wait + waited, self.total + took

    def metrics(self) -> dict[str, float]:
        rate = self.steps * self.samples_per_step / max(self.total, 1e-9)
        # trainer_cpu_s: this process's CPU seconds so far (all threads): beside the machine's, the data path's share
        out = {"samples_per_s": rate, "tokens_per_s": rate * self.tokens_per_sample,
               "data_wait_fraction": self.data_wait / max(self.total, 1e-9), "trainer_cpu_s": time.process_time(),
               **_summed_across_ranks(self.counted)}
        self.steps, self.data_wait, self.total = 0, 0.0, 0.0
        return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    clock = Timeline(config.get("launched_at"))
    clock.mark("worker_start")
    quiet_train_worker_logs()
    adopt_modalities(config.get("modalities", {}))
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets OMP_NUM_THREADS to the worker's (fractional → 1) CPU share; give torch the node's
    # cores split across the workers on it instead (or exactly train.threads)
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    # Ray Data starts its read and preprocessing tasks while the model, the health batch and the probe are built
    batches = WarmStart(_batches(cfg, cfg.train.batch_size // world))
    seed_everything(cfg.train.seed)
    model = Oskar(cfg)
    state, optimizer_state = _restore(model, config)
    state.run_id = config.get("run_id") or state.run_id
    wrapped = prepare_ddp(model)
    optimizer = build_optimizer(wrapped, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    clock.mark("model")
    _run_steps(cfg, config, wrapped, optimizer, state, rank, batches, clock)


def _restore(model: Oskar, config: dict[str, Any]) -> tuple[TrainState, dict | None]:
    """After a failure Ray hands back the last reported checkpoint; else ``--resume`` if given."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume"):
        checkpoint = ray.train.Checkpoint(config["resume"])  # a local path or an object-store URI
    if checkpoint is None:
        return TrainState(), None
    with checkpoint.as_directory() as directory:  # downloads one on object storage
        return _load(directory, model)


def _load(directory: str | Path, model: Oskar) -> tuple[TrainState, dict]:
    state = load_checkpoint(directory, model)
    return state, torch.load(Path(directory) / "optimizer.pt", map_location="cpu", weights_only=True)


def _run_steps(cfg, config, wrapped, optimizer, state: TrainState, rank: int, batches: Iterator[dict],
               clock: Timeline) -> None:
    model = unwrap(wrapped)
    device = next(model.parameters()).device
    client = client_for(config["tracking_uri"]) if rank == 0 and state.run_id else None
    monitor = HealthMonitor.for_run(cfg, model, device) if rank == 0 else None
    probe, probe_off = OnlineProbe.from_config(cfg, device) if rank == 0 else (None, "")
    if probe_off and cfg.eval.online_probe_every > 0:  # asked for but impossible: say so, on the run too
        print(f"online probe off: {probe_off}", flush=True)
        if client:
            set_tags(client, state.run_id, {"probe.off": probe_off[:5000]})
    _skip_trained_batches(batches, state, config.get("stream_start_step", 0), client)
    clock.mark("monitor")
    throughput = _Throughput(cfg)
    fail_at = config.get("fail_at_step")
    started = time.perf_counter()
    for step in range(state.step, cfg.train.steps):
        if fail_at is not None and step == fail_at and rank == 0 and _first_time(config["fail_marker"]):
            raise RuntimeError(f"injected worker failure at step {step}")
        tick = time.perf_counter()
        batch = move_batch(throughput.count(next(batches)), device)
        waited = time.perf_counter() - tick
        first = step == state.step
        if first:
            clock.mark("first_batch")
        try:
            metrics = train_step(wrapped, optimizer, batch, step, cfg, reduce=_mean_across_ranks)
        except NonFiniteLossError as err:
            _report_error(client, state, str(err), step)
            return
        throughput.add(waited, time.perf_counter() - tick)
        done = step + 1
        clock.mark("first_step" if first else "steps")
        last = done == cfg.train.steps
        log_now, probe_now = due(done, cfg.train.log_every, cfg), due(done, cfg.eval.online_probe_every, cfg)
        if probe_now and probe is not None:
            metrics.update(probe(model))
        if log_now:
            metrics.update(throughput.metrics())
            if monitor is not None and due(done, cfg.eval.rankme_every, cfg):
                metrics.update(monitor.check(model))
            if rank == 0:
                _log(client, state, cfg, metrics, done, started)
            if cfg.eval.collapse_fatal and _flag_from_rank0(metrics.get("health/collapse_alarm", 0.0)):
                _report_error(client, state, collapse_reason(done), step)
                return
        elif probe_now and client is not None:
            log_metrics(client, state.run_id, {k: v for k, v in metrics.items() if k.startswith("probe/")}, done)
        checkpoint_now = due(done, cfg.train.checkpoint_every, cfg)
        if log_now or probe_now or checkpoint_now or last:
            # the last report carries this worker's stages: the driver logs them with its own (ray_trainer.py)
            reported = _scalars({**metrics, **(clock.durations() if last else {})})
            _report(model, optimizer, cfg, TrainState(done, state.run_id, reported), rank, checkpoint_now)


def _skip_trained_batches(batches: Iterator[dict], state: TrainState, stream_start: int, client) -> None:
    """A worker group Ray restarted mid-run (a failure) gets the run's stream again from its start, while the
    restored checkpoint is ``state.step - stream_start`` steps into it: skip those batches (data path only, no
    model compute) so training continues the stream instead of seeing the same samples again."""
    skip = state.step - stream_start
    if skip <= 0:
        return
    for _ in range(skip):
        next(batches)
    note = f"worker restarted at step {state.step}: skipped the {skip} batches already trained on"
    print(note, flush=True)
    if client is not None:
        set_tags(client, state.run_id, {"data.stream_restart": note})


def _flag_from_rank0(value: float) -> bool:
    """Rank 0's health verdict, shared so every rank stops at the same step."""
    flag = torch.tensor([float(value)])
    if dist.is_available() and dist.is_initialized():
        flag = flag.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _first_time(marker: str) -> bool:
    """Whether the injected failure has not fired yet (the marker lives in the run's storage,
    which every node sees)."""
    from .. import storage

    if storage.exists(marker):
        return False
    storage.write_text(marker, "")
    return True


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _log(client, state: TrainState, cfg: OskarConfig, metrics: dict, done: int, started: float) -> None:
    if client is not None:
        log_metrics(client, state.run_id, metrics, step=done)
        if metrics.get("health/collapse_alarm"):
            set_tags(client, state.run_id, alarm_tag(done))
    elapsed = time.perf_counter() - started
    eta = elapsed / max(done - state.step, 1) * (cfg.train.steps - done)
    print(progress_line(done, cfg.train.steps, metrics, metrics["samples_per_s"], eta,
                        metrics["data_wait_fraction"]), flush=True)


def _report(model: Oskar, optimizer, cfg: OskarConfig, state: TrainState, rank: int, checkpoint: bool) -> None:
    """One ``ray.train.report`` per rank; at checkpoint steps rank 0 attaches the checkpoint."""
    metrics = {"step": state.step, **state.metrics}
    if rank != 0 or not checkpoint:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model, optimizer, cfg, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _report_error(client, state: TrainState, message: str, step: int) -> None:
    if client is not None:
        set_tags(client, state.run_id, {"error": message})
    print(f"stopping: {message}", flush=True)
    ray.train.report({"step": step, "error": message}, checkpoint=None)
