"""Benchmark: fixed token budgets decouple compute from the number of modalities.

Runbook::

    python experiments/bench_budget.py --skip b              # tiny.yaml (the recipe), CPU
    python experiments/bench_budget.py --config experiments/configs/smoke.yaml --skip b   # every modality in and out
    python experiments/bench_budget.py --config experiments/configs/base.yaml --device cuda

Prints, measured side by side in one run (variants interleaved round by round,
median of rounds, so machine noise hits all of them alike):

(a) one full training step (forward, backward, AdamW, EMA) with 1, 2 and 3
    modalities present at the same budgets, as a ratio to the smallest set —
    for OSKAR's budgets and for a naive baseline that feeds *all* non-target
    tokens of the present modalities to the encoder — next to the step's
    FLOPs (forward + backward, torch's counter: no machine noise) and the
    share of them the EMA target encoders take;
(b) our encoder's forward+backward over timm ``VisionTransformer`` blocks of
    the same width/depth/heads on the same token count (needs the ``bench``
    extra: timm, and a torchvision built for the installed torch).

Which sets are compared. A set is timed only if its samples can carry the
budgets the way the config's recipe draws them: at least ``input_tokens +
target_tokens`` tokens, and some modality the recipe lets in and some it
predicts (input / target weight > 0; else the draw falls back to an even split
and the step is not the recipe's). The ratios are to the smallest such set.
On tiny.yaml a lone modality cannot: video has 128 tokens for 128 in + 32 out
and is never a target, so tiny's baseline is video + skeleton (video in,
skeleton out, plus the video -> skeleton contrast), the smallest set the recipe
trains on, and "3 modalities" adds captions (in and out, plus the video ->
caption contrast). On smoke.yaml every modality is in and out: 3 vs video
alone. The fusion encoder and the predictor cost the same in every set (the
budgets); what each *target* modality adds is its EMA target encoder, one
no-grad pass over its full token set for the rows that read it (docs/design.md,
"Target encoders: what the method requires").
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from oskar_ray.config import OskarConfig, load_config
from oskar_ray.model import Oskar
from oskar_ray.model.blocks import Transformer
from oskar_ray.model.budget import build_modalities
from oskar_ray.train import build_optimizer, train_step
from oskar_ray.train.step import autocast_for, resolved_precision

MODALITY_SETS = (("video",), ("video", "skeleton"), ("video", "skeleton", "text"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], None]], rounds: int, repeats: int,
                        device: torch.device, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = clock()
            for _ in range(repeats):
                fn()
            _sync(device)
            samples[name].append((clock() - start) / repeats)
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


def why_not(cfg: OskarConfig, names: tuple[str, ...]) -> str | None:
    """Why samples of ``names`` cannot carry ``cfg``'s budgets as its recipe draws them (None: they can)."""
    budget, reasons = cfg.budget, []
    tokens = sum(build_modalities(cfg)[n].num_tokens for n in names)
    if tokens < budget.input_tokens + budget.target_tokens:
        reasons.append(f"{tokens} tokens < {budget.input_tokens} in + {budget.target_tokens} out")
    for side, weights in (("input", budget.input_weights), ("target", budget.target_weights)):
        if not any(weights.get(n, 1.0) > 0 for n in names):
            reasons.append(f"no {side} in the recipe ({side}_weights 0)")
    return "; ".join(reasons) or None


#: torch's counter knows the GPU attention kernels; the CPU one (fp32 attention on CPU) is added here
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def step_flops(cfg: OskarConfig, names: tuple[str, ...], device: torch.device) -> tuple[float, float]:
    """(forward + backward FLOPs of one training step, the part of them in the EMA target encoders)."""
    torch.manual_seed(0)
    model = Oskar(cfg).to(device).train()
    batch = _batch_with(model, names, cfg.train.batch_size)
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        with autocast_for(cfg, device):
            loss = model(batch)["loss"]
        loss.backward()
    per_module = counter.get_flop_counts()
    targets = sum(sum(ops.values()) for name, ops in per_module.items()
                  if name.startswith("Oskar.target_encoders.") and name.count(".") == 2)
    return counter.get_total_flops(), targets


def bench_modalities(cfg: OskarConfig, device: torch.device, rounds: int,
                     clock: Callable[[], float] = time.perf_counter) -> None:
    sets = [names for names in MODALITY_SETS if why_not(cfg, names) is None]
    if not sets:
        raise SystemExit(f"no modality set in {MODALITY_SETS} can carry these budgets")
    fns, flops = {}, {}
    for names in sets:
        naive = _naive_config(cfg, names)
        fns[f"oskar/{len(names)}"] = step_fn(cfg, names, device)
        fns[f"naive/{len(names)}"] = step_fn(naive, names, device)
        flops[f"oskar/{len(names)}"] = step_flops(cfg, names, device)
        flops[f"naive/{len(names)}"] = step_flops(naive, names, device)
    times = interleaved_medians(fns, rounds, repeats=2, device=device, clock=clock)
    base, last = len(sets[0]), len(sets[-1])
    print(f"(a) training step, batch {cfg.train.batch_size}, budgets {cfg.budget.input_tokens} in / "
          f"{cfg.budget.target_tokens} out, target_alpha {cfg.budget.target_alpha}, "
          f"{resolved_precision(cfg, device)}; ratios to {'+'.join(sets[0])}")
    for names in MODALITY_SETS:
        if (reason := why_not(cfg, names)) is not None:
            print(f"    {'+'.join(names)}: not timed, {reason}")
    print(f"    {'modalities':<22}{'oskar s/step':>13}{'ratio':>7}{'GFLOP':>8}{'ratio':>7}{'target enc.':>12}"
          f"{'naive s/step':>14}{'ratio':>7}{'FLOP ratio':>11}")
    for names in sets:
        k = len(names)
        ours, naive = times[f"oskar/{k}"], times[f"naive/{k}"]
        (total, target), (naive_total, _) = flops[f"oskar/{k}"], flops[f"naive/{k}"]
        print(f"    {'+'.join(names):<22}{ours:>13.4f}{ours / times[f'oskar/{base}']:>7.2f}{total / 1e9:>8.1f}"
              f"{total / flops[f'oskar/{base}'][0]:>7.2f}{target / total:>12.0%}"
              f"{naive:>14.4f}{naive / times[f'naive/{base}']:>7.2f}{naive_total / flops[f'naive/{base}'][0]:>11.2f}")
    print(f"    {last} / {base} modalities: oskar {times[f'oskar/{last}'] / times[f'oskar/{base}']:.2f}x step time, "
          f"{flops[f'oskar/{last}'][0] / flops[f'oskar/{base}'][0]:.2f}x FLOPs; naive "
          f"{times[f'naive/{last}'] / times[f'naive/{base}']:.2f}x step time")


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
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--skip", choices=["a", "b"], default=None)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="(a)'s clock: process CPU time resists other jobs on a shared machine (use --threads 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, {args.clock} clock")
    if args.skip != "a":
        bench_modalities(cfg, device, args.rounds, time.process_time if args.clock == "process" else time.perf_counter)
    if args.skip != "b":
        bench_timm(cfg, device, args.rounds)


if __name__ == "__main__":
    main()
