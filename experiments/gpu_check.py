"""The GPU checks in one run (<= 5 minutes on one H100/H200); exits 0 with "skipped" where there is no GPU.

Runbook::

    bash experiments/gpu_check.sh          # = python experiments/gpu_check.py
    python experiments/gpu_check.py --only parity,mfu

Checks, in order (each prints one PASS/FAIL line; the exit status is the number of failures):

1. ``parity``: base.yaml (ViT-B geometry, 16 x 224 x 224 video) loss under bf16 autocast within
   ``PARITY_TOLERANCE`` (relative) of the fp32 loss on the same batch and the same masks;
2. ``mfu``: ``bench_train.py --mfu`` on base.yaml: step time, tokens/s, TFLOP/s and MFU against the device's
   dense bf16 peak (bf16 autocast, batch 32);
3. ``ddp``: ``oskar pretrain`` through Ray Train with one worker per visible GPU (NCCL DDP), smoke config,
   bf16, 20 steps on a small synthesised set: finishes with a finite loss;
4. ``decode``: ``bench_decode.py`` at 224^2: Ray Data vs a tight PyAV loop on this machine's cores, and the
   decode cores one base.yaml step on this GPU needs.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
#: bf16 autocast vs fp32 loss, relative (bf16 keeps 8 mantissa bits; the loss averages thousands of terms)
PARITY_TOLERANCE = 0.02
CHECKS = ("parity", "mfu", "ddp", "decode")


def parity() -> bool:
    import numpy as np
    import torch

    from oskar_ray.config import load_config
    from oskar_ray.model import Oskar, move_batch

    cfg = load_config(REPO / "experiments/configs/base.yaml", ["train.batch_size=8"])
    model = Oskar(cfg).cuda().eval()  # eval: no queue or running statistics move between the two passes
    batch = model.example_batch(8, seed=1)
    batch.update(model.sampler.sample_batch(batch, np.random.default_rng(0)))  # the same masks on both sides
    batch = move_batch(batch, "cuda")
    losses = {}
    for name, context in (("fp32", torch.autocast("cuda", enabled=False)),
                          ("bf16", torch.autocast("cuda", dtype=torch.bfloat16))):
        with torch.no_grad(), context:
            losses[name] = float(model(batch)["loss"])
    gap = abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"])
    ok = math.isfinite(losses["bf16"]) and gap <= PARITY_TOLERANCE
    print(f"parity: fp32 {losses['fp32']:.5f} bf16 {losses['bf16']:.5f} relative gap {gap:.4f} "
          f"(<= {PARITY_TOLERANCE}) {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def mfu() -> bool:
    from bench_train import report_mfu

    from oskar_ray.config import load_config

    cfg = load_config(REPO / "experiments/configs/base.yaml", ["train.batch_size=32", "train.num_workers=1"])
    out = report_mfu(cfg, "cuda", steps=10)
    ok = math.isfinite(out["tflops"]) and out["tflops"] > 0
    print(f"mfu: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def ddp() -> bool:
    import torch
    from mlflow.tracking import MlflowClient

    from oskar_ray.config import load_config
    from oskar_ray.data.synth import SynthSpec, generate
    from oskar_ray.train.ray_trainer import pretrain

    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ds"
        generate(SynthSpec(samples=130, pretrain_samples=400, seed=0, workers=4, untrimmed_frames=32), data,
                 progress=False)
        cfg = load_config(REPO / "experiments/configs/smoke.yaml", [
            f"data.path={data}", "train.use_gpu=true", f"train.num_workers={gpus}", "train.cpus_per_worker=2",
            "train.precision=bf16", "train.steps=20", f"train.batch_size={8 * gpus}", "train.log_every=5",
            "train.checkpoint_every=20", f"train.output_dir={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/m.db"])
        started = time.perf_counter()
        result = pretrain(cfg, run_name="gpu-ddp")
        losses = [m.value for m in MlflowClient(cfg.tracking.uri).get_metric_history(result.run_id, "loss")]
    ok = bool(losses) and all(math.isfinite(v) for v in losses)
    print(f"ddp: {gpus} GPU worker(s), 20 steps in {time.perf_counter() - started:.0f} s, loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f} {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def decode() -> bool:
    from bench_decode import main as bench_decode

    bench_decode(["--rows", "64", "--size", "224", "--config", str(REPO / "experiments/configs/base.yaml"),
                  "--device", "cuda"])
    print("decode: PASS (ratio and decode cores above)", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: skipped (nothing to check)")
        return 0
    print(f"gpu_check on {torch.cuda.device_count()} x {torch.cuda.get_device_name()}", flush=True)
    failures = 0
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            failures += not globals()[name]()
        except Exception as err:  # one check failing must not hide the others' results
            print(f"{name}: FAIL ({type(err).__name__}: {err})", flush=True)
            failures += 1
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
