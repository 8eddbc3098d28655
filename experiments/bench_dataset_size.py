"""Steady-state training throughput on a small dataset (many epochs) vs the built-in one (one epoch).

Runbook::

    python experiments/bench_dataset_size.py                      # tiny config, 200 steps each side
    python experiments/bench_dataset_size.py --steps 400 --small-clips 300

Both sides train the same config through Ray Train (``oskar pretrain``'s path) for
the same steps and read the ``samples_per_s`` the run logs after ``--skip``
warm-up steps (harmonic mean of the logged windows):

* built-in: the SynthAction pretrain split (tens of thousands of clips: about
  one epoch per run, one Ray Data stream);
* small: a user-sized dataset made of the first ``--small-clips`` clips of the
  benchmark's train split (a run streams it for dozens of epochs: a union of
  per-epoch streams, see ``oskar_ray.train.ray_trainer.training_stream``).

Prints both rates and small / built-in (issue 27's goal: >= 0.9), plus each
run's wall time and data-wait fraction, alternating the sides so drift on a
shared machine hits both alike. Run it alone: a second job on 2 cores halves
any ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from oskar_ray.config import load_config
from oskar_ray.data import store
from oskar_ray.data.resolve import resolve_data
from oskar_ray.tracking import client_for
from oskar_ray.train.ray_trainer import pretrain


def small_dataset(builtin: str, clips: int, out: Path) -> str:
    """A copy of the benchmark's manifest whose pretrain split is the first ``clips`` train clips."""
    manifest = store.load_manifest(builtin)
    table = pq.read_table(store.split_paths(builtin, "train")).slice(0, clips)
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "pretrain" / "part-00000.parquet", compression="zstd", row_group_size=128)
    (out / manifest["tokenizer"]).write_bytes(Path(builtin, manifest["tokenizer"]).read_bytes())
    manifest["splits"] = {"pretrain": {"samples": table.num_rows, "shards": ["pretrain/part-00000.parquet"],
                                       "labelled": False}}
    store.save_manifest(out, manifest)
    return str(out)


def run(cfg, data: str, skip: int, workdir: Path) -> dict[str, float]:
    cfg.data.path, cfg.train.output_dir = data, str(workdir / "runs")
    cfg.tracking.uri = f"sqlite:///{workdir / 'bench.db'}"
    cfg.train.checkpoint_every = cfg.train.steps
    started = time.perf_counter()
    result = pretrain(cfg, run_name=f"bench-{time.time_ns()}")
    wall = time.perf_counter() - started
    client = client_for(cfg.tracking.uri)
    rates = [m.value for m in client.get_metric_history(result.run_id, "samples_per_s") if m.step > skip]
    waits = [m.value for m in client.get_metric_history(result.run_id, "data_wait_fraction") if m.step > skip]
    return {"rate": len(rates) / sum(1.0 / r for r in rates), "wall": wall, "wait": float(np.mean(waits))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=40, help="warm-up steps left out of the rate")
    parser.add_argument("--small-clips", type=int, default=300, help="clips in the small dataset")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two sides")
    parser.add_argument("--only", choices=["built-in", "small"], help="time one side (no ratio)")
    args = parser.parse_args()
    base = resolve_data(load_config(args.config, [f"train.steps={args.steps}", "train.log_every=10",
                                                  "eval.online_probe_every=0"]))
    with tempfile.TemporaryDirectory() as tmp:
        small = small_dataset(base.data.path, args.small_clips, Path(tmp) / "small")
        epochs = args.steps * base.train.batch_size / max(args.small_clips - base.train.batch_size, 1)
        print(f"{args.config}: {args.steps} steps x batch {base.train.batch_size} (first {args.skip} excluded); "
              f"built-in {base.data.path}; small: {args.small_clips} clips (~{epochs:.0f} epochs)", flush=True)
        results: dict[str, list[dict]] = {"built-in": [], "small": []}
        for _ in range(args.rounds):
            for name, data in (("built-in", base.data.path), ("small", small)):
                if args.only and name != args.only:
                    continue
                out = run(load_config(args.config, [f"train.steps={args.steps}", "train.log_every=10",
                                                    "eval.online_probe_every=0"]), data, args.skip,
                          Path(tmp) / name)
                results[name].append(out)
                print(f"  {name:<8} {out['rate']:7.1f} samples/s  data wait {out['wait']:.3f}  "
                      f"wall {out['wall']:.0f} s", flush=True)
    if args.only:
        return
    rate = {k: float(np.mean([r["rate"] for r in v])) for k, v in results.items()}
    wall = {k: float(np.mean([r["wall"] for r in v])) for k, v in results.items()}
    print(f"steady state: small {rate['small']:.1f} | built-in {rate['built-in']:.1f} samples/s | "
          f"ratio {rate['small'] / rate['built-in']:.3f} (goal >= 0.90); whole-run wall ratio "
          f"{wall['small'] / wall['built-in']:.2f}")


if __name__ == "__main__":
    main()
