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
  benchmark's train split (a run streams it for dozens of epochs, one after the
  other in one stream, see ``oskar_ray.train.ray_trainer.training_stream``).

Prints both rates and small / built-in (issue 27's goal: >= 0.9), plus each
run's wall time, data-wait fraction and the data path's CPU share over the same
steady-state window: 1 - trainer CPU / machine CPU, where the trainer's CPU
seconds are what its worker logs (``trainer_cpu_s``) and the machine's are read
from /proc/stat every 0.5 s (everything outside the trainer: Ray Data's tasks and
coordinator, Ray's daemons, MLflow; on an otherwise idle machine, the data path).
``--data-cpus X`` runs both sides under ``data.max_cpus=X`` (Ray Data's CPU
budget). Alternates the sides so drift on a shared machine hits both alike. Run
it alone: a second job on 2 cores halves any ratio, and its CPU counts as data.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
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


class MachineCpu:
    """Busy CPU seconds of the whole machine (/proc/stat), sampled in the background with wall-clock times."""

    def __init__(self, every: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self._stop, self._every = threading.Event(), every
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def busy_seconds() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.busy_seconds()))
            self._stop.wait(self._every)

    def __enter__(self) -> MachineCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> float:
        times, busy = zip(*self.samples, strict=True)
        return float(np.interp(end, times, busy) - np.interp(start, times, busy))


def run(cfg, data: str, skip: int, workdir: Path) -> dict[str, float]:
    cfg.data.path, cfg.train.output_dir = data, str(workdir / "runs")
    cfg.tracking.uri = f"sqlite:///{workdir / 'bench.db'}"
    cfg.train.checkpoint_every = cfg.train.steps
    started = time.perf_counter()
    with MachineCpu() as machine:
        result = pretrain(cfg, run_name=f"bench-{time.time_ns()}")
    wall = time.perf_counter() - started
    client = client_for(cfg.tracking.uri)
    rates = [m.value for m in client.get_metric_history(result.run_id, "samples_per_s") if m.step > skip]
    waits = [m.value for m in client.get_metric_history(result.run_id, "data_wait_fraction") if m.step > skip]
    # the steady-state window: from the first logged step after the warm-up to the last
    history = client.get_metric_history(result.run_id, "trainer_cpu_s")
    cpu = sorted((m.step, m.timestamp / 1000, m.value) for m in history)
    first = next(c for c in cpu if c[0] >= skip)
    trainer, total = cpu[-1][2] - first[2], machine.between(first[1], cpu[-1][1])
    return {"rate": len(rates) / sum(1.0 / r for r in rates), "wall": wall, "wait": float(np.mean(waits)),
            "data_share": 1.0 - trainer / total, "machine_cores": total / (cpu[-1][1] - first[1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=40, help="warm-up steps left out of the rate")
    parser.add_argument("--small-clips", type=int, default=300, help="clips in the small dataset")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the two sides")
    parser.add_argument("--only", choices=["built-in", "small"], help="time one side (no ratio)")
    parser.add_argument("--data-cpus", type=float, default=0.0, help="data.max_cpus of both sides (0: uncapped)")
    args = parser.parse_args(argv)
    overrides = [f"train.steps={args.steps}", "train.log_every=10", "eval.online_probe_every=0",
                 f"data.max_cpus={args.data_cpus}"]
    base = resolve_data(load_config(args.config, overrides))
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
                out = run(load_config(args.config, overrides), data, args.skip, Path(tmp) / name)
                results[name].append(out)
                print(f"  {name:<8} {out['rate']:7.1f} samples/s  data wait {out['wait']:.3f}  "
                      f"data-path CPU share {out['data_share']:.2f} (machine busy {out['machine_cores']:.2f} "
                      f"cores)  wall {out['wall']:.0f} s", flush=True)
    if args.only:
        return
    rate = {k: float(np.mean([r["rate"] for r in v])) for k, v in results.items()}
    share = {k: float(np.mean([r["data_share"] for r in v])) for k, v in results.items()}
    wall = {k: float(np.mean([r["wall"] for r in v])) for k, v in results.items()}
    print(f"steady state: small {rate['small']:.1f} | built-in {rate['built-in']:.1f} samples/s | "
          f"ratio {rate['small'] / rate['built-in']:.3f} (goal >= 0.90); whole-run wall ratio "
          f"{wall['small'] / wall['built-in']:.2f}; data-path CPU share small {share['small']:.2f} | built-in "
          f"{share['built-in']:.2f} (data.max_cpus={args.data_cpus or 'uncapped'})")


if __name__ == "__main__":
    main()
