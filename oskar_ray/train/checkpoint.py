"""Training checkpoints: everything needed to continue at the exact step.

A checkpoint directory holds

* ``model.safetensors`` — fusion encoder, target encoders, predictor;
* ``optimizer.pt``      — AdamW state (moments, step counts);
* ``rng.pt``            — torch / numpy / python RNG states and the model's budget-sampler RNG;
* ``state.json``        — next step to run, MLflow run id, metrics at save time;
* ``config.yaml``       — the resolved config (V-JEPA-style: weights never travel without it).

Schedules (LR, weight decay, EMA momentum) are pure functions of the step, so
restoring the step restores them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import storage
from ..config import OskarConfig, load_config, save_config
from ..model import Oskar

STATE = "state.json"
WEIGHTS = "model.safetensors"


@dataclass
class TrainState:
    step: int = 0
    run_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: str | Path, model: Oskar, optimizer: torch.optim.Optimizer,
                    cfg: OskarConfig, state: TrainState) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_weights(directory / WEIGHTS)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "sampler": model._rng.bit_generator.state}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, directory / "rng.pt")
    save_config(cfg, directory / "config.yaml")
    (directory / STATE).write_text(json.dumps({"step": state.step, "run_id": state.run_id,
                                               "metrics": state.metrics}, indent=2))
    return directory


def read_state(directory: str | Path) -> TrainState:
    path = storage.join(directory, STATE)  # local directory or object-store URI
    if not storage.is_file(path):
        raise FileNotFoundError(f"{directory}: not a checkpoint (no {STATE})")
    raw = json.loads(storage.read_text(path))
    return TrainState(step=int(raw["step"]), run_id=raw.get("run_id", ""), metrics=raw.get("metrics", {}))


def load_checkpoint(directory: str | Path, model: Oskar, optimizer: torch.optim.Optimizer | None = None) -> TrainState:
    """Restore weights, optimizer and RNG states in place; returns the saved state."""
    directory = Path(directory)
    state = read_state(directory)
    model.load_weights(directory / WEIGHTS)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True))
    rng = torch.load(directory / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    model._rng.bit_generator.state = rng["sampler"]
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def latest_checkpoint(run_dir: str, max_step: int | None = None) -> tuple[str, int] | None:
    """(path, step) of the newest checkpoint of a Ray Train run directory (local or a URI) at or before
    ``max_step``, or None. A stopped trial may train on for a moment while Tune stops it; its checkpoints past
    the step the scheduler decided on are not the model that was ranked."""
    found = []
    if not storage.is_dir(run_dir):
        return None
    for name in storage.list_dir(run_dir):
        path = storage.join(run_dir, name)
        if name.startswith("checkpoint_") and storage.is_file(storage.join(path, STATE)):
            step = read_state(path).step
            if max_step is None or step <= max_step:
                found.append((step, path))
    if not found:
        return None
    step, path = max(found)
    return path, step


def checkpoint_config(directory: str | Path) -> OskarConfig:
    return load_config(storage.local_file(storage.join(directory, "config.yaml")))
