"""Benchmark: train-step time with ``train.precision=bf16`` vs fp32, side by side, on this machine's device.

Runbook::

    python experiments/bench_precision.py                          # tiny_pose config, CPU, ~2 min
    python experiments/bench_precision.py --config experiments/configs/tiny.yaml --set train.threads=1
    python experiments/bench_precision.py --config experiments/configs/base.yaml --device cuda

Two models with the same initial weights train on the same structured example
batches (``Oskar.example_batch``; the shapes, and so the FLOPs, are a real
batch's). Steps alternate between the two in blocks, so drift on a shared
machine hits both alike; the first ``--skip`` steps of each are excluded.
It prints the median step time of each, the bf16 / fp32 ratio and both
mean losses over the timed steps (they should agree to a few percent).

On a CPU with bf16 matmul units (AVX512-BF16, AMX; the header line says, from ``cpu_has_bf16_matmul_units``)
bf16 autocast makes the tiny_pose step about 0.7x fp32 (0.69 on the 2-core EPYC); without them it can be
slower than fp32, so CPU configs keep fp32 unless this says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from oskar_ray.config import load_config
from oskar_ray.model import Oskar
from oskar_ray.train import build_optimizer, seed_everything, train_step
from oskar_ray.train.step import cpu_has_bf16_matmul_units


def timed_steps(side: dict, batches: list[dict], first_step: int, device: torch.device) -> list[float]:
    times = []
    for offset, batch in enumerate(batches):
        started = time.perf_counter()
        metrics = train_step(side["model"], side["optimizer"], batch, first_step + offset, side["cfg"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        side["losses"].append(metrics["loss"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny_pose.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per precision")
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--block", type=int, default=10, help="steps per side before switching")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    base = load_config(args.config, args.overrides)
    if base.train.threads:
        torch.set_num_threads(base.train.threads)
    seed_everything(base.train.seed)
    model = Oskar(base).to(device)
    sides = {}
    for precision in ("fp32", "bf16"):
        cfg = copy.deepcopy(base)
        cfg.train.precision = precision
        twin = copy.deepcopy(model)
        sides[precision] = {"cfg": cfg, "model": twin, "optimizer": build_optimizer(twin, cfg),
                            "losses": [], "times": []}
    total = args.skip + args.steps
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in model.example_batch(
        base.train.batch_size, seed=index).items()} for index in range(total)]
    units = f" (bf16 matmul units: {'yes' if cpu_has_bf16_matmul_units() else 'no'})" if device.type == "cpu" else ""
    print(f"{args.config}, batch {base.train.batch_size}, {torch.get_num_threads()} threads, device {device}{units}: "
          f"{args.steps} timed steps per precision (first {args.skip} excluded), blocks of {args.block}")
    for start in range(0, total, args.block):
        for side in sides.values():
            side["times"] += timed_steps(side, batches[start:start + args.block], start, device)
    step_s = {name: statistics.median(side["times"][args.skip:]) for name, side in sides.items()}
    loss = {name: statistics.fmean(side["losses"][args.skip:]) for name, side in sides.items()}
    for name in sides:
        print(f"  {name}: {step_s[name] * 1e3:7.1f} ms/step (median)   mean loss {loss[name]:.4f}")
    print(f"bf16 / fp32 step time {step_s['bf16'] / step_s['fp32']:.3f}   "
          f"mean loss ratio {loss['bf16'] / loss['fp32']:.3f}")


if __name__ == "__main__":
    main()
