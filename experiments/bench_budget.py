"""Benchmark: fixed token budgets decouple compute from the number of modalities.

Runbook::

    python experiments/bench_budget.py                      # tiny config, CPU
    python experiments/bench_budget.py --config experiments/configs/base.yaml --device cuda

Prints, measured side by side in one run (variants interleaved round by round,
median of rounds, so machine noise hits all of them alike):

(a) one full training step (forward, backward, AdamW, EMA) with 1, 2 and 3
    modalities present at the same budgets, as a ratio to 1 modality — for
    OSKAR's budgets and for a naive baseline that feeds *all* non-target
    tokens of the present modalities to the encoder;
(b) our encoder's forward+backward over timm ``VisionTransformer`` blocks of
    the same width/depth/heads on the same token count (needs the ``bench``
    extra: timm, and a torchvision built for the installed torch).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from oskar_ray.config import OskarConfig, load_config
from oskar_ray.model import Oskar
from oskar_ray.model.blocks import Transformer
from oskar_ray.model.budget import build_modalities
from oskar_ray.train import build_optimizer, train_step

MODALITY_SETS = (("video",), ("video", "skeleton"), ("video", "skeleton", "text"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], None]], rounds: int, repeats: int,
                        device: torch.device) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


def _batch_with(model: Oskar, names: tuple[str, ...], batch_size: int) -> dict:
    batch = model.example_batch(batch_size)
    # full-length captions: the naive baseline needs a fixed token count per sample
    batch["text_mask"] = torch.ones_like(batch["text_mask"])
    batch["text_ids"] = batch["text_ids"].clamp(min=5)
    for modality in model.modalities.values():
        if modality.name not in names:
            for key in modality.batch_keys:
                del batch[key]
            del batch["present"][modality.name]
    return batch


def _naive_config(cfg: OskarConfig, names: tuple[str, ...]) -> OskarConfig:
    """Same model; the encoder input is every token of the present modalities but the targets.

    Not re-validated on purpose: the input budget exceeds the visible tokens,
    so the sampler spills into the masked ones — i.e. nothing is dropped.
    """
    naive = copy.deepcopy(cfg)
    modalities = build_modalities(cfg)
    total = sum(modalities[n].num_tokens for n in names)
    naive.budget.input_tokens = total - cfg.budget.target_tokens
    return naive


def step_fn(cfg: OskarConfig, names: tuple[str, ...], device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    model = Oskar(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    batch = _batch_with(model, names, cfg.train.batch_size)
    state = {"step": 0}

    def run() -> None:
        train_step(model, optimizer, batch, state["step"], cfg)
        state["step"] += 1

    return run


def bench_modalities(cfg: OskarConfig, device: torch.device, rounds: int) -> None:
    fns = {}
    for names in MODALITY_SETS:
        fns[f"oskar/{len(names)}"] = step_fn(cfg, names, device)
        fns[f"naive/{len(names)}"] = step_fn(_naive_config(cfg, names), names, device)
    times = interleaved_medians(fns, rounds, repeats=2, device=device)
    print(f"(a) training step, batch {cfg.train.batch_size}, budgets "
          f"{cfg.budget.input_tokens} in / {cfg.budget.target_tokens} out, target_alpha {cfg.budget.target_alpha}")
    print(f"    {'modalities':<28}{'oskar s/step':>14}{'ratio':>8}{'naive s/step':>14}{'ratio':>8}")
    for names in MODALITY_SETS:
        k = len(names)
        ours, naive = times[f"oskar/{k}"], times[f"naive/{k}"]
        print(f"    {'+'.join(names):<28}{ours:>14.4f}{ours / times['oskar/1']:>8.2f}"
              f"{naive:>14.4f}{naive / times['naive/1']:>8.2f}")


def bench_timm(cfg: OskarConfig, device: torch.device, rounds: int) -> None:
    try:
        from timm.models.vision_transformer import Block as TimmBlock
    except Exception as err:  # timm missing, or torchvision not matching torch
        print(f"(b) skipped: timm unavailable ({type(err).__name__}: {err}); see README 'Benchmarks'")
        return
    m = cfg.model
    tokens = cfg.budget.input_tokens
    ours = Transformer(m.dim, m.depth, m.heads, m.mlp_ratio, m.qkv_bias).to(device)
    theirs = nn.Sequential(
        *[TimmBlock(m.dim, m.heads, m.mlp_ratio, qkv_bias=m.qkv_bias) for _ in range(m.depth)],
        nn.LayerNorm(m.dim, eps=1e-6),
    ).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    x = torch.randn(cfg.train.batch_size, tokens, m.dim, device=device, requires_grad=True)

    def fwd_bwd(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            module(x).sum().backward()
        return run

    times = interleaved_medians({"ours": fwd_bwd(ours), "timm": fwd_bwd(theirs)}, rounds, 3, device)
    print(f"(b) encoder fwd+bwd, D={m.dim} depth={m.depth} heads={m.heads}, {tokens} tokens, "
          f"batch {cfg.train.batch_size}; params ours {n_ours} timm {n_theirs}")
    print(f"    ours {times['ours']:.4f} s   timm {times['timm']:.4f} s   ratio ours/timm "
          f"{times['ours'] / times['timm']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/smoke.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--skip", choices=["a", "b"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if args.skip != "a":
        bench_modalities(cfg, device, args.rounds)
    if args.skip != "b":
        bench_timm(cfg, device, args.rounds)


if __name__ == "__main__":
    main()
