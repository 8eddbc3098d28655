"""Benchmark: Ray Train overhead — TorchTrainer (1 worker) vs the plain loop, same data.

Runbook::

    python experiments/bench_train.py                       # tiny config, CPU, ~5 min
    python experiments/bench_train.py --steps 200 --set train.threads=1

Both sides train the tiny config on the same SynthAction pretrain split
(synthesised into ``data/`` if absent) for the same number of steps and
report steady-state samples/s (the first ``--skip`` steps excluded: process
start, Ray Data warm-up, first-epoch compile of the plan):

* single process: ``iterate_local`` → ``oskar_ray.train.train`` (the loop of ``oskar pretrain --local``);
* Ray Train: ``oskar pretrain`` machinery (``TorchTrainer``, Ray Data shard,
  DDP wrapper, checkpoints, MLflow), throughput read back from the
  ``samples_per_s`` metric it logs.

Goal: Ray Train ≥ 0.90 × single process.

``--mfu`` instead times the model step alone on ``--device`` (cpu or cuda; the
config's ``train.precision``, e.g. base.yaml's bf16 autocast) on an example batch
and prints step time, tokens/s, achieved TFLOP/s (``oskar_ray.tune.flops``) and, on
a known GPU, MFU against its dense bf16 peak::

    python experiments/bench_train.py --mfu --device cuda --config experiments/configs/base.yaml

``--overhead`` runs ``experiments/bench_overhead.py`` (its options follow): ``oskar pretrain`` vs ``oskar
pretrain --local`` as whole commands, 40 tiny steps, their start-up stage by stage (issue 29: ratio <= 1.5).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from oskar_ray.config import OskarConfig, load_config
from oskar_ray.data.pipeline import iterate_local
from oskar_ray.data.resolve import resolve_data
from oskar_ray.tracking import client_for
from oskar_ray.train import train
from oskar_ray.train.ray_trainer import pretrain


def single_process(cfg: OskarConfig, skip: int) -> float:
    """Samples/s of the single-process loop (``oskar pretrain --local``'s) after ``skip`` warm-up steps."""
    batches = iterate_local(cfg.data.path, cfg.data.train_split, cfg, cfg.train.batch_size, seed=0, train=True,
                            epochs=10_000, drop_last=True)
    marks: dict[str, float] = {}

    def start_clock(step: int, _metrics: dict) -> None:
        if step == skip - 1:
            marks["started"] = time.perf_counter()

    train(cfg, batches, on_step=start_clock)
    return (cfg.train.steps - skip) * cfg.train.batch_size / (time.perf_counter() - marks["started"])


def ray_train(cfg: OskarConfig, skip: int, workdir: Path) -> float:
    cfg.train.output_dir = str(workdir / "runs")
    cfg.tracking.uri = f"sqlite:///{workdir / 'bench.db'}"
    cfg.train.checkpoint_every = cfg.train.steps  # one checkpoint at the end, as a real run would
    result = pretrain(cfg, run_name="bench")
    history = client_for(cfg.tracking.uri).get_metric_history(result.run_id, "samples_per_s")
    windows = [m.value for m in sorted(history, key=lambda m: m.step) if m.step > skip]
    # each window's rate is samples / step time; average step time over windows (harmonic mean)
    return len(windows) / sum(1.0 / w for w in windows)


#: dense bf16 peak TFLOP/s (no sparsity) by device-name fragment, from the vendors' data sheets
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in device_name), None)


def model_step_rate(cfg: OskarConfig, device: str, steps: int) -> dict[str, float]:
    """Median step time of the model alone (example batch already on ``device``; no data path)."""
    import torch

    from oskar_ray.model import Oskar, move_batch
    from oskar_ray.train.step import build_optimizer, train_step
    from oskar_ray.tune.flops import flops_per_step

    torch.manual_seed(0)
    model = Oskar(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    batch = move_batch(model.example_batch(cfg.train.batch_size), device)
    times = []
    for step in range(steps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, optimizer, batch, step, cfg)  # .item() on the loss: the step has finished
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[3:]))
    flops = flops_per_step(cfg)  # train.batch_size samples: the batch this one device just ran
    tokens = cfg.train.batch_size * (cfg.budget.input_tokens + cfg.budget.target_tokens)
    return {"step_s": step_s, "tokens_per_s": tokens / step_s, "tflops": flops / step_s / 1e12}


def report_mfu(cfg: OskarConfig, device: str, steps: int) -> dict[str, float]:
    import torch

    out = model_step_rate(cfg, device, steps)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_tflops(name) if device == "cuda" else None
    out["mfu"] = out["tflops"] / peak if peak else float("nan")
    print(f"{name}: batch {cfg.train.batch_size}, precision {cfg.train.precision}, step {out['step_s'] * 1e3:.1f} ms, "
          f"{out['tokens_per_s']:.0f} tokens/s, {out['tflops']:.1f} TFLOP/s"
          + (f", MFU {out['mfu']:.3f} of {peak:.0f} dense bf16 TFLOP/s" if peak else " (no peak known: no MFU)"))
    return out


def main() -> None:
    if "--overhead" in sys.argv[1:]:  # = experiments/bench_overhead.py (its options follow)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        __import__("bench_overhead").main([a for a in sys.argv[1:] if a != "--overhead"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/smoke.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out of the rate (>= 1)")
    parser.add_argument("--mfu", action="store_true", help="time the model step alone on --device (see above)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.mfu:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        report_mfu(load_config(args.config, args.overrides), args.device, min(args.steps, 20))
        return
    cfg = load_config(args.config, [f"train.steps={args.steps}", "train.log_every=10", *args.overrides])
    cfg = resolve_data(cfg)
    print(f"tiny config, batch {cfg.train.batch_size}, {args.steps} steps (first {args.skip} excluded), "
          f"data {cfg.data.path}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        # alternate twice so drift on a shared machine hits both sides alike
        for name, run in itertools.chain.from_iterable(itertools.repeat(
                [("single", lambda: single_process(cfg, args.skip)),
                 ("ray", lambda: ray_train(cfg, args.skip, Path(tmp) / str(time.time())))], 2)):
            rates.setdefault(name, []).append(run())
            print(f"  {name:<7} {rates[name][-1]:8.1f} samples/s", flush=True)
    single, ray_rate = np.mean(rates["single"]), np.mean(rates["ray"])
    print(f"single process {single:.1f} samples/s | Ray Train 1 worker {ray_rate:.1f} samples/s | "
          f"ratio {ray_rate / single:.3f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
