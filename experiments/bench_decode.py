"""Decode throughput of encoded videos: the Ray Data pipeline against a tight PyAV loop on the same cores.

Runbook::

    python experiments/bench_decode.py                      # ../shared/data/videos if present, else synthesised
    python experiments/bench_decode.py --videos clips/ --rows 96 --size 224 --frames 16 --step 4
    python experiments/bench_data.py --decode ...            # the same

Builds an encoded dataset (``ingest --video-storage encoded``) of ``--rows`` rows
cycling over the videos, then measures, side by side in one run:

1. the limit: a tight loop of PyAV decodes (``decode_clip``: seek, decode the
   window, swscale to the crop, no Python around it but the loop) of the same
   training clips, one process per core;
2. the product: Ray Data's pipeline (``build_dataset``: read units →
   map_batches(preprocess_batch) with video only: window + random resized crop +
   decode + normalise), iterated to the end after a warm-up pass;

and prints frames/s of each, their ratio (issue 28's goal: >= 0.8), the decode
core-seconds per frame, and the cores of decode one training step of the base
config needs (batch x frames per step / frames/s per core / step seconds, with the
step timed here on this CPU: on a GPU, divide by its step time instead).
Run it alone: a second job on 2 cores halves any ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
#: the config the decode sides read the clips with (video only; the model settings do not matter here)
PIPELINE = REPO / "experiments/configs/smoke.yaml"


def make_dataset(videos: Path | None, rows: int, out: Path) -> Path:
    from oskar_ray.data import store
    from oskar_ray.data.ingest import IngestOptions, ingest

    if videos is None:
        videos = out.parent / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        from oskar_ray.data.readers.video import write_video

        rng = np.random.default_rng(0)
        for i in range(4):
            frames = rng.integers(0, 255, (150, 256, 340, 3), dtype=np.uint8)
            write_video(videos / f"synth{i}.mp4", frames, fps=30)
    ingest(IngestOptions(out=out, split="source", videos=videos), progress=False)
    table = pq.read_table(store.split_paths(out, "source"))
    index = np.arange(rows) % table.num_rows
    repeated = table.take(pa.array(index)).set_column(0, "id", pa.array([f"row{i:05d}" for i in range(rows)]))
    (out / "bench").mkdir(exist_ok=True)
    shards = []
    for k in range(0, rows, store.ENCODED_ROWS_PER_SHARD):  # ingest's shard size for encoded videos
        shards.append(f"bench/part-{k:05d}.parquet")
        pq.write_table(repeated.slice(k, store.ENCODED_ROWS_PER_SHARD), out / shards[-1])
    manifest = store.load_manifest(out)
    store.add_split(manifest, "bench", shards, rows, video_storage="encoded", labelled=False)
    store.save_manifest(out, manifest)
    return out


def _decode_rows(job: tuple[list[str], list[int], list[str]]) -> int:
    """Worker of the tight loop: decode the training clip of each row (PyAV only), return frames decoded."""
    from oskar_ray.config import load_config
    from oskar_ray.data.encoded_video import clip_plan, video_info
    from oskar_ray.data.readers.clips import decode_clip

    paths, positions, overrides = job
    cfg = load_config(PIPELINE, overrides)
    plan, size = clip_plan(cfg), (cfg.modalities["video"].height, cfg.modalities["video"].width)
    table = pq.read_table(paths, columns=["video", "attributes"]).take(pa.array(positions)).to_pydict()
    done = 0
    for k, (data, attrs) in enumerate(zip(table["video"], table["attributes"], strict=True)):
        info, rng = video_info(attrs), np.random.default_rng(k)
        index, _ = plan.train_window(int(info["frames"]), rng)
        box, flip = plan.train_box(int(info["width"]), int(info["height"]), rng)
        done += len(decode_clip(data, index, box, size, float(info["fps"]), flip))
    return done


def tight_loop(shards: list[str], rows: int, cores: int, overrides: list[str]) -> float:
    jobs = [(shards, list(range(c, rows, cores)), overrides) for c in range(cores)]
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode_rows, [(shards, [0], overrides)] * cores)  # warm-up: imports, config
        start = time.perf_counter()
        frames = sum(pool.map(_decode_rows, jobs))
    return frames / (time.perf_counter() - start)


def ray_pipeline(cfg, frames_per_clip: int) -> float:
    import ray

    from oskar_ray.data.pipeline import build_dataset, stream_block_mb
    from oskar_ray.ray_runtime import DATA_BLOCK_MB, use_block_size

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    # the block size a run gives its stream: 8 clips at 224^2, not Ray's 128 MB, which would merge a task's
    # 8-clip batches into 154 MB blocks
    use_block_size(stream_block_mb(cfg, DATA_BLOCK_MB))
    ds = build_dataset(cfg, "bench", train=True, with_masks=False)
    for _ in ds.iter_batches(batch_size=None):  # warm-up: worker start, imports
        pass
    # steady state: from the first block out (Ray Data's file listing and start-up excluded) to the last;
    # blocks as produced (batch_size=None): re-batching 224^2 float clips would cost the driver a core
    start, clips = None, 0
    for batch in ds.iter_batches(batch_size=None):
        if start is None:
            start = time.perf_counter()
        else:
            clips += len(batch["video"])
    rate = clips * frames_per_clip / (time.perf_counter() - start)
    ray.shutdown()
    return rate


def step_seconds(cfg, device: str) -> float:
    """Seconds of one training step of ``cfg`` on ``device`` (bench_train.py's model-alone timing)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import model_step_rate

    return model_step_rate(cfg, device, steps=3)["step_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, help="folder of videos (default ../shared/data/videos, else synthetic)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="crop output side")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--step", type=int, default=4, help="data.frame_step")
    parser.add_argument("--config", default=str(REPO / "experiments/configs/tiny.yaml"), help="the base config")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the base step is timed")
    args = parser.parse_args(argv)
    from oskar_ray.config import load_config

    shared = REPO.parent / "shared" / "data" / "videos"
    videos = args.videos or (shared if shared.is_dir() else None)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        data = make_dataset(videos, args.rows, Path(tmp) / "ds")
        overrides = [f"data.path={data}", f"modalities.video.frames={args.frames}",
                     f"modalities.video.height={args.size}", f"modalities.video.width={args.size}",
                     "modalities.video.patch=16", f"data.frame_step={args.step}", "modalities.skeleton.enabled=false",
                     "modalities.text.enabled=false"]
        cfg = load_config(PIPELINE, overrides)
        print(f"{args.rows} clips of {args.frames} frames (step {args.step}) cropped to {args.size}^2 from "
              f"{videos or 'synthetic 340x256 videos'}; {cores} cores")
        from oskar_ray.data import store

        limit = tight_loop(store.split_paths(data, "bench"), args.rows, cores, overrides)
        print(f"  tight PyAV loop, {cores} processes   {limit:8.1f} frames/s", flush=True)
        ray_rate = ray_pipeline(cfg, args.frames)
        print(f"  Ray Data pipeline (decode+crop+norm) {ray_rate:8.1f} frames/s", flush=True)
    per_core = limit / cores
    base = load_config(args.config, ["train.num_workers=1"])
    step = step_seconds(base, args.device)
    v = base.modalities["video"]
    needed = base.train.batch_size * v.frames / per_core / step
    print(f"ratio Ray Data / tight loop {ray_rate / limit:.3f} (goal >= 0.80); decode {1e3 / per_core:.2f} "
          f"core-ms per frame at {args.size}^2")
    print(f"base config ({Path(args.config).name}: batch {base.train.batch_size} x {v.frames} frames, step "
          f"{step * 1e3:.0f} ms on {args.device}): {needed:.2f} decode cores keep one trainer fed at {args.size}^2 "
          f"({base.train.batch_size * v.frames / per_core:.2f} core-seconds of decode per step)")


if __name__ == "__main__":
    main()
