"""A single-process pretraining run: batches → :func:`train` → weights on disk.

Console: one line per ``train.log_every`` steps (step, loss per modality,
samples/s, ETA). Output: ``<run_dir>/weights.safetensors`` and
``<run_dir>/config.yaml`` (the resolved config, written by the caller).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from ..config import OskarConfig
from ..model import Oskar
from .loop import progress_line, seed_everything, train


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
