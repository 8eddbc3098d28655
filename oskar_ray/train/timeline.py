"""Where a run's wall time goes: start-up stage by stage, the steps, the wind-down.

Runbook::

    clock = Timeline()                       # at the start of a stage sequence (wall clock: shared by processes)
    ...; clock.mark("ray_init")              # the stage that just ended, and how long it took
    clock.durations()                        # {"time/ray_init_s": 3.9, ...}

``oskar pretrain`` keeps one in the driver (``ray_init``, ``tracking``, ``datasets``, then after the workers
``wind_down`` and ``artifacts``) and one in the rank-0 worker, started at the driver's ``fit()`` call
(``worker_start``: Ray Train's controller, placement group and worker process; ``model``; ``monitor``: the
health batch and online probe; ``first_batch``: Ray Data's first block; ``first_step``; ``steps``). Both are
logged to the run as ``time/<stage>_s`` metrics; ``experiments/bench_train.py --overhead`` prints them
beside the single-process run (``oskar pretrain --local``: ``resolve_data``, ``tracking``, ``model``, ``monitor``
(the health batch), ``data``, ``steps``, ``artifacts``). The wall clock (``time.time``) is what processes on one machine
share; across nodes the stages that span the driver and a worker read as accurate as the clocks are
synchronised.
"""

from __future__ import annotations

import time

#: metric name of a stage's seconds
METRIC = "time/{}_s"


class Timeline:
    def __init__(self, start: float | None = None):
        self.start = time.time() if start is None else start
        self.last = self.start
        self.stages: dict[str, float] = {}

    def mark(self, stage: str) -> float:
        """End ``stage`` now; returns its seconds (a stage marked twice adds up)."""
        now = time.time()
        took = max(now - self.last, 0.0)
        self.stages[stage] = self.stages.get(stage, 0.0) + took
        self.last = now
        return took

    def extend(self, durations: dict[str, float]) -> None:
        """Stages timed elsewhere (another process's ``durations()``), taken as following on from the last mark."""
        for key, seconds in durations.items():
            stage = key[len("time/"):-len("_s")] if key.startswith("time/") else key
            self.stages[stage] = self.stages.get(stage, 0.0) + float(seconds)
            self.last += float(seconds)

    def durations(self) -> dict[str, float]:
        return {METRIC.format(stage): seconds for stage, seconds in self.stages.items()}

    def summary(self) -> str:
        return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.stages.items())
