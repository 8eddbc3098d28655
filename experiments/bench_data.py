"""Data pipeline benchmark: throughput with 1 and 2 CPU workers, and how much of a training step waits on data.

Runbook::

    python experiments/bench_data.py                       # synthesises a temporary SynthAction set
    python experiments/bench_data.py --data data/synth --steps 60 --batch-size 32
    python experiments/bench_data.py --dataset-size [--data-cpus 0.5]   # = experiments/bench_dataset_size.py
    python experiments/bench_data.py --decode [--size 224]              # = experiments/bench_decode.py
    python experiments/bench_data.py --stream                           # = experiments/bench_stream.py
    python experiments/bench_data.py --pacer                            # = experiments/bench_pacer.py

Prints, measured side by side in one run:

1. storage: bytes per clip and decode time per clip for raw uint8 frames (what the
   store keeps) vs the same clip re-encoded with PyAV (MPEG-4 Part 2 and H.264);
2. preprocessing throughput (samples/s): in-process (no Ray), then Ray Data with
   1 and 2 concurrent ``map_batches`` tasks;
3. the fraction of a tiny-config training step spent waiting on data, for the
   Ray pipeline (prefetching in the background) and for in-process loading; the
   step is a forward + backward + AdamW step of ``oskar_ray.model.Oskar(cfg)``
   when it is importable, else a comparable torch workload (the output says which).
Goal from issue 3: data wait <= 5 % of step time on this machine for the tiny config.

``--dataset-size`` instead runs ``experiments/bench_dataset_size.py`` (its options follow): steady-state
samples/s through Ray Train on a small dataset (many epochs) vs the built-in one, side by side, and the data
path's CPU share on each (issue 27's goal: small / built-in >= 0.9). ``--decode`` runs
``experiments/bench_decode.py``: frames/s of Ray Data decoding encoded videos vs a tight PyAV loop (goal >= 0.8).
``--stream`` runs ``experiments/bench_stream.py``: the trainer's step with Ray Data streaming under the run's data
budget vs the same step on pre-loaded batches (issue 29's goal: <= 1.1). ``--pacer`` runs
``experiments/bench_pacer.py``: a fast consumer's rows/s under the scheduling loop's pacer vs Ray's loop alone
(goal >= 0.9), and the loop's wake-ups with a slow one.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    for flag, module in (("--dataset-size", "bench_dataset_size"), ("--decode", "bench_decode"),
                         ("--stream", "bench_stream"), ("--pacer", "bench_pacer")):
        if flag in sys.argv[1:]:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            __import__(module).main([a for a in sys.argv[1:] if a != flag])
            return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset directory (default: synthesise a temporary one)")
    parser.add_argument("--samples", type=int, default=3000, help="clips to synthesise when --data is absent")
    parser.add_argument("--config", default=str(REPO / "experiments" / "configs" / "smoke.yaml"))
    parser.add_argument("--split", default="pretrain")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per loader")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from oskar_ray.config import load_config

    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
    data = args.data or _synthesise(Path(tmp.name) / "synth", args.samples)
    cfg = load_config(args.config, [f"data.path={data}", f"train.batch_size={args.batch_size}"])
    print(f"dataset {data}  split {args.split}  batch {args.batch_size}  cpus {os.cpu_count()}  "
          f"torch threads {torch.get_num_threads()}")
    _storage(data, args.split)
    _throughput(cfg, args.split, args.batch_size)
    _data_wait(cfg, args.split, args.batch_size, args.steps)
    tmp.cleanup()
    return 0


def _synthesise(out: Path, samples: int) -> Path:
    from oskar_ray.data.synth import SynthSpec, generate

    start = time.perf_counter()
    generate(SynthSpec(samples=samples, workers=2), out, progress=False)
    took = time.perf_counter() - start
    print(f"synth: {samples} tiny clips in {took:.1f} s with 2 processes ({samples / took:.0f} clips/s)")
    return out


# --- 1. storage -------------------------------------------------------------------
def _storage(data: Path, split: str, clips: int = 64) -> None:
    import av

    from oskar_ray.data import store
    from oskar_ray.data.readers.video import write_video

    manifest = store.load_manifest(data)
    h, w = manifest["shapes"]["height"], manifest["shapes"]["width"]
    table = pq.read_table(store.split_paths(data, split)[0], columns=["video"]).slice(0, clips)
    raw = table.column("video").to_pylist()
    sink = io.BytesIO()
    pq.write_table(pa.table({"video": raw}), sink, compression="zstd")
    print(f"\n[storage] {len(raw)} clips of {len(raw[0]) // (h * w * 3)}x{h}x{w}")
    start = time.perf_counter()
    for r in raw:
        np.frombuffer(r, np.uint8).reshape(-1, h, w, 3).astype(np.float32)
    per_raw = (time.perf_counter() - start) / len(raw)
    print(f"  raw uint8 (stored)  {sink.tell() / len(raw) / 1024:7.1f} KiB/clip (zstd)  decode {per_raw * 1e3:7.3f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("mpeg4", "h264"):
            encoded = []
            for i, r in enumerate(raw):
                path = write_video(Path(tmp) / f"{codec}{i}.mp4", np.frombuffer(r, np.uint8).reshape(-1, h, w, 3),
                                   codec=codec)
                encoded.append(path.read_bytes())
            start = time.perf_counter()
            for blob in encoded:
                with av.open(io.BytesIO(blob)) as container:
                    np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            per = (time.perf_counter() - start) / len(encoded)
            size = statistics.mean(len(b) for b in encoded) / 1024
            print(f"  re-encoded {codec:7s}  {size:7.1f} KiB/clip         decode {per * 1e3:7.3f} ms "
                  f"({per / per_raw:.0f}x raw)")


# --- 2. throughput ----------------------------------------------------------------
def _throughput(cfg, split: str, batch_size: int) -> None:
    import ray

    from oskar_ray.data.pipeline import build_dataset, iter_train_batches, iterate_local

    print("\n[throughput] preprocessing incl. tokenization + token-budget masks (samples/s)")
    rates = {}
    start, n = time.perf_counter(), 0
    for batch in iterate_local(cfg.data.path, split, cfg, batch_size, train=True):
        n += len(batch["video"])
    rates["in-process (no Ray)"] = n / (time.perf_counter() - start)
    # 4 logical CPUs on 2 cores: fractional tasks + the driver never starve each other (RAY_NOTES.md)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    for workers in (1, 2):
        ds = build_dataset(cfg, split, train=True, concurrency=workers)
        for _ in iter_train_batches(ds, cfg, batch_size):  # warm-up: worker start, imports, tokenizer load
            pass
        start, n = time.perf_counter(), 0
        for batch in iter_train_batches(ds, cfg, batch_size):
            n += len(batch["video"])
        rates[f"Ray Data, {workers} CPU worker{'s' if workers > 1 else ''}"] = n / (time.perf_counter() - start)
    base = rates["Ray Data, 1 CPU worker"]
    for name, rate in rates.items():
        print(f"  {name:26s} {rate:8.1f} samples/s   ({rate / base:.2f}x Ray 1 worker)")


# --- 3. data wait -----------------------------------------------------------------
def _workload(cfg):
    try:
        from oskar_ray.model import Oskar

        model = Oskar(cfg)

        def step(batch):
            return model(batch)["loss"]

        return model, step, "oskar_ray.model.Oskar forward+backward+AdamW"
    except ImportError:
        v = cfg.modalities["video"]
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(v.frames * 3 * v.height * v.width, 512),
                                    torch.nn.GELU(), torch.nn.Linear(512, 128))

        def step(batch):
            return model(batch["video"]).pow(2).mean()

        return model, step, "stand-in MLP on video (oskar_ray.model.Oskar not importable)"


def _timed_loop(make_iter, cfg, steps: int) -> tuple[float, float]:
    model, step, _ = _workload(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it, waits, totals = make_iter(), [], []
    for k in range(steps + 3):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:  # next epoch; the restart is counted as waiting
            it = make_iter()
            batch = next(it)
        t1 = time.perf_counter()
        loss = step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if k >= 3:  # skip warm-up (worker start, first allocations)
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    return sum(waits) / sum(totals), statistics.mean(totals)


def _data_wait(cfg, split: str, batch_size: int, steps: int) -> None:
    from oskar_ray.data.pipeline import build_dataset, iter_train_batches, iterate_local

    print(f"\n[data wait] {steps} steps, workload: {_workload(cfg)[2]}")
    ds = build_dataset(cfg, split, train=True, concurrency=1)
    results = {
        "Ray Data (background prefetch)": _timed_loop(lambda: iter_train_batches(ds, cfg, batch_size), cfg, steps),
        "in-process (loads on the step)": _timed_loop(
            lambda: iterate_local(cfg.data.path, split, cfg, batch_size, train=True, drop_last=True), cfg, steps),
    }
    for name, (fraction, step_s) in results.items():
        goal = "meets" if fraction <= 0.05 else "misses"
        print(f"  {name:32s} waits {fraction * 100:5.1f} % of a {step_s * 1e3:6.0f} ms step ({goal} the 5 % goal)")
    ray_frac, local_frac = results["Ray Data (background prefetch)"][0], results["in-process (loads on the step)"][0]
    print(f"  ratio in-process / Ray wait fraction: {local_frac / max(ray_frac, 1e-9):.1f}x")


if __name__ == "__main__":
    sys.exit(main())
