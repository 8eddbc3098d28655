"""One OSKAR optimisation step: schedules, forward under autocast, clipping, the EMA step.

Both loops call :func:`train_step` — the single-process one
(:mod:`oskar_ray.train.single_process`) and the Ray Train worker loop
(:mod:`oskar_ray.train.worker_loop`, with a DDP-wrapped model) — so schedules,
clipping, the EMA step and the non-finite-loss check exist once.

Runbook::

    optimizer = build_optimizer(model, cfg)
    metrics = train_step(model, optimizer, batch, step, cfg)   # {"loss": .., "loss/video": .., "lr": ..}
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..config import OskarConfig
from ..model import Oskar, momentum_at
from .schedules import lr_at, weight_decay_at


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops rather than corrupt the weights."""


class RunStopped(RuntimeError):
    """A run ended itself (a non-finite loss, a fatal health alarm) and is marked FAILED: what either launcher
    raises to its caller; ``reason`` is the run's error tag."""

    def __init__(self, reason: str, run_id: str):
        super().__init__(f"pretraining stopped: {reason} (MLflow run {run_id} marked FAILED)")
        self.reason = reason


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> Oskar:
    """The Oskar module under a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def build_optimizer(model: nn.Module, cfg: OskarConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases, norms,
    embeddings vectors and tokens (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay, "scheduled_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "scheduled_decay": False},
    ]
    t = cfg.train
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=False)


def apply_schedules(optimizer: torch.optim.Optimizer, cfg: OskarConfig, step: int) -> dict[str, float]:
    lr, weight_decay = lr_at(cfg.train, step), weight_decay_at(cfg.train, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["scheduled_decay"]:
            group["weight_decay"] = weight_decay
    return {"lr": lr, "weight_decay": weight_decay}


def autocast_for(cfg: OskarConfig, device: torch.device):
    """bf16 autocast on GPU and CPU alike: on a CPU with bf16 matmul units (AVX512-BF16 / AMX) a tiny-config
    step takes about 0.7x the fp32 time; on one without them it can be slower (``experiments/bench_precision.py``)."""
    if resolved_precision(cfg, device) == "bf16":
        if device.type == "cpu":
            _warn_once_if_cpu_lacks_bf16_units()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolved_precision(cfg: OskarConfig, device: torch.device) -> str:
    """``train.precision``, with ``auto`` made bf16 on a bf16 GPU or a CPU with bf16 matmul units, else fp32: the
    default recipe then takes the faster arithmetic wherever it runs (results differ by well under the
    seed-to-seed spread, docs/results.md, "Against the goal: bf16 buys the steps")."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"  # V100 / T4: no bf16
    return "bf16" if device.type == "cpu" and cpu_has_bf16_matmul_units() else "fp32"


def cpu_has_bf16_matmul_units() -> bool:
    """AVX512-BF16 or AMX-BF16 (x86), or the BF16 extension (Arm), as torch's own CPU probe reports them."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))


@functools.cache
def _warn_once_if_cpu_lacks_bf16_units() -> None:
    # still correct without them (bf16 is emulated), only slower: a warning, not an error
    if not cpu_has_bf16_matmul_units():
        warnings.warn(
            "train.precision=bf16 on a CPU without bf16 matmul units (no AVX512-BF16 / AMX-BF16): steps run "
            "slower than in fp32; set train.precision=fp32 (experiments/bench_precision.py measures both)",
            RuntimeWarning, stacklevel=3,
        )


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, step: int, cfg: OskarConfig,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Schedules → forward → finite check → backward → clip → AdamW → EMA.

    ``reduce`` averages the loss across data-parallel ranks before the finite
    check, so every rank stops at the same step instead of hanging in backward.
    """
    metrics = apply_schedules(optimizer, cfg, step)
    model.train()
    device = next(unwrap(model).parameters()).device
    with autocast_for(cfg, device):
        out = model(batch)
    loss = out["loss"]
    loss_value = reduce(loss.detach()) if reduce is not None else loss.detach()
    if not torch.isfinite(loss_value):
        details = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}
        raise NonFiniteLossError(f"non-finite loss at step {step}: {details}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    momentum = momentum_at(cfg, step, cfg.train.steps)
    unwrap(model).update_targets(momentum)
    metrics.update({k: float(v.detach()) for k, v in out.items() if k.startswith(("loss/", "reg/"))})
    metrics["loss"] = float(loss_value)
    metrics["grad_norm"] = float(grad_norm)
    metrics["momentum"] = float(np.mean(list(momentum.values())))
    return metrics


def progress_line(done: int, total: int, metrics: dict[str, float], samples_per_s: float, eta_s: float,
                  data_wait: float | None = None) -> str:
    """The one console line per log step, shared by the plain loop and the Ray worker."""
    parts = " ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
    wait = "" if data_wait is None else f"  data wait {data_wait:.0%}"
    return (f"step {done:>6}/{total}  loss {metrics['loss']:.4f} ({parts})  lr {metrics['lr']:.2e}  "
            f"{samples_per_s:.1f} samples/s{wait}  ETA {eta_s:.0f}s")
