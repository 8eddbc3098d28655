"""Ray Data's scheduling loop under this project's pacer, against Ray's loop alone and a pacer that sleeps every step.

Runbook::

    python experiments/bench_data.py --pacer                  # = experiments/bench_pacer.py
    python experiments/bench_data.py --pacer --rows 6 --row-kb 2352 --reps 1     # ViT-B-sized clips

Ray Data's streaming executor spins while every operator is backpressured, so every Ray run of this project
paces it (``oskar_ray/data_pacer.py``). A pacer must not also cap the stream for a consumer faster than ten loop
steps a second (a GPU trainer). Side by side in one run, each mode on a fresh dataset whose two read tasks yield
``--rows`` rows at a time (Ray merges yields into blocks of up to 16 MB), under the runs' Ray Data settings
(``ray_runtime.budget_data``: 16 MB blocks, here a 64 MB window):

* a fast consumer (takes 32-row batches as fast as they come): rows/s, with producers always ahead, and
  data-bound (each read task sleeping ``--produce-ms`` before each yield: the consumer waits on the producers,
  which are idle, not busy, meanwhile);
* a slow consumer (a batch every 0.3 s, a CPU trainer's step): scheduling-loop steps a second and the CPU of
  this process (where the executor's loop runs; the consumer sleeps) while it waits;

for three modes: Ray's loop alone (no pacer), a pacer sleeping every step to 0.1 s (the previous one), and
``DataSchedulerPacer``. Goal: the pacer's fast-consumer rows/s >= 0.9x Ray's loop alone, both ways, at about
the previous pacer's loop rate with a slow consumer (~10 steps a second; more where its batches' blocks move in
many steps). After a warm-up, the modes' order rotates between alternations (3 put each mode in each place).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from oskar_ray import data_pacer, ray_runtime

#: yields of each read task; read tasks at once; read tasks in all
YIELDS_PER_TASK, TASKS, SHARDS = 40, 2, 8
SLOW_STEP_S, SLOW_BATCHES, BATCH = 0.3, 20, 32


class _Counted(data_pacer.DataSchedulerPacer):
    """Counts the loop's steps (all modes in one list: one mode runs at a time), then paces as :meth:`pace` does."""

    steps: list[float] = []

    def on_execution_step(self, executor) -> None:
        _Counted.steps.append(time.perf_counter())
        self.pace(executor)

    def pace(self, executor) -> None:
        super().on_execution_step(executor)


class Unpaced(_Counted):
    def pace(self, executor) -> None:
        pass


class EveryStep(_Counted):
    """The previous pacer: every step lasts at least the full period, whatever it moved."""

    def pace(self, executor) -> None:
        wait = self._last + data_pacer.SCHEDULING_LOOP_PERIOD_S - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        self._last = time.perf_counter()


class Pacer(_Counted):
    pass


MODES = {"Ray's loop alone": Unpaced, "pacer, every step": EveryStep, "DataSchedulerPacer": Pacer}


def _dataset(rows: int, row_bytes: int, produce_s: float = 0.0):
    import ray

    def read(batch):
        for _ in range(YIELDS_PER_TASK):
            time.sleep(produce_s)
            yield {"x": np.ones((rows, row_bytes // 4), dtype=np.float32)}

    return ray.data.from_items(list(range(SHARDS)), override_num_blocks=SHARDS).map_batches(
        read, batch_size=1, num_cpus=1 / TASKS, compute=ray.data.TaskPoolStrategy(size=TASKS))


def _use(mode) -> None:
    from ray.data import DataContext

    getattr(DataContext.get_current(), data_pacer.EXECUTION_CALLBACKS_FIELD)[:] = [mode]


def fast_rows_per_s(mode, rows: int, row_bytes: int, produce_s: float = 0.0) -> float:
    """A consumer taking batches as fast as they come: rows/s after the first batch."""
    _use(mode)
    batches = iter(_dataset(rows, row_bytes, produce_s).iter_batches(batch_size=BATCH, prefetch_batches=2))
    next(batches)  # the stream's start is not the loop's pace
    started, taken = time.perf_counter(), 0
    for batch in batches:
        taken += len(batch["x"])
    return taken / (time.perf_counter() - started)


def slow_loop(mode, rows: int, row_bytes: int) -> tuple[float, float]:
    """Loop steps a second and this process's CPU (cores) while a slow consumer takes batches."""
    _use(mode)
    batches = iter(_dataset(rows, row_bytes).iter_batches(batch_size=BATCH, prefetch_batches=2))
    for _ in range(3):
        next(batches)
    steps, wall, cpu = len(_Counted.steps), time.perf_counter(), time.process_time()
    for _ in range(SLOW_BATCHES):
        time.sleep(SLOW_STEP_S)
        next(batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = (len(_Counted.steps) - steps) / wall
    for _ in batches:  # drain: the next mode starts on an idle cluster
        pass
    return rate, cpu / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rows per block a read task yields")
    parser.add_argument("--row-kb", type=float, default=49, help="KiB per row (a tiny preprocessed clip: ~49)")
    parser.add_argument("--produce-ms", type=float, default=20,
                        help="the data-bound stream: ms a read task sleeps before each yield")
    parser.add_argument("--reps", type=int, default=3, help="alternations of the modes (rotated each time)")
    args = parser.parse_args(argv)
    import logging

    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per dataset would bury the table
    ray_runtime.budget_data(0.0, 64.0)
    row_bytes, names = int(args.row_kb * 1024), list(MODES)
    fast_rows_per_s(Unpaced, args.rows, row_bytes)  # warm-up, not counted: the first dataset starts cold workers
    ahead, bound, slow = ({name: [] for name in MODES} for _ in range(3))
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            ahead[name].append(fast_rows_per_s(MODES[name], args.rows, row_bytes))
            bound[name].append(fast_rows_per_s(MODES[name], args.rows, row_bytes, args.produce_ms / 1000))
            slow[name].append(slow_loop(MODES[name], args.rows, row_bytes))
    _print(args, ahead, bound, slow)
    ray.shutdown()
    return 0


def _print(args, ahead: dict, bound: dict, slow: dict) -> None:
    mean = statistics.mean
    print(f"yields of {args.rows} rows x {args.row_kb:g} KiB, {TASKS} read tasks, a 64 MB window; {args.reps} "
          f"alternations. Fast consumer, rows/s: the producers ahead / data-bound ({args.produce_ms:g} ms a yield "
          f"a task); slow consumer (a batch every {SLOW_STEP_S} s): loop steps/s, this process's cores")
    base = {"ahead": mean(ahead["Ray's loop alone"]), "bound": mean(bound["Ray's loop alone"])}
    for name in MODES:
        print(f"  {name:20s} {mean(ahead[name]):8.0f} ({mean(ahead[name]) / base['ahead']:.2f}x) / "
              f"{mean(bound[name]):6.0f} ({mean(bound[name]) / base['bound']:.2f}x) rows/s; "
              f"{mean(r for r, _ in slow[name]):7.1f} steps/s, {mean(c for _, c in slow[name]):.2f} cores")
    print(f"DataSchedulerPacer / Ray's loop alone, fast consumer: producers ahead "
          f"{mean(ahead['DataSchedulerPacer']) / base['ahead']:.2f}, data-bound "
          f"{mean(bound['DataSchedulerPacer']) / base['bound']:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    raise SystemExit(main())
