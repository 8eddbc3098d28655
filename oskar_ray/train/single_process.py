"""The single-process pretraining loop: ``oskar pretrain --local``, the tests, the baselines.

Runbook (no Ray)::

    from oskar_ray.config import load_config
    from oskar_ray.train import train
    history = train(load_config("experiments/configs/smoke.yaml", ["train.steps=50"]))   # per-step metrics
    run_single_process(cfg, Path("runs/local"))    # + progress lines, weights.safetensors in the run dir

Without batches the loop trains on ``Oskar.example_batch`` (structured random
signals) — enough to check that the objective learns. Console: one line per
``train.log_every`` steps (step, loss per modality, samples/s, ETA). The caller
writes the resolved ``config.yaml`` beside the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from ..config import OskarConfig
from ..model import Oskar
from .step import build_optimizer, progress_line, seed_everything, train_step


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
) -> list[dict[str, float]]:
    """Run ``cfg.train.steps`` steps single-process; returns per-step metrics."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = model or Oskar(cfg)
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
    def on_step(step: int, metrics: dict[str, float]) -> None:
        done = step + 1
        if done % cfg.train.log_every and done != cfg.train.steps:
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
