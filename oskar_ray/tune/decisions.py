"""What the scheduler decided at each rung, rebuilt from the trials' MLflow runs (``scheduler_decisions.csv``).

Runbook::

    frame = scheduler_decisions(client, spec, rows, runs, train_steps)   # one row per (rung, trial that reached it)
    frame[["rung", "trial_id", "probe/video/knn_top1", "rank", "decision"]]

Rebuilt rather than recorded: a sweep resumed after its driver died has no memory of the decisions made before,
but every trial's run keeps the signal it reported at each step, how far it trained and where the scheduler
stopped it (``oskar.stopped_at_step``). A stopped trial was stopped at the last rung it reached; it continued at
the rungs before; a trial that trained to the end continued at every rung. The value ranked at a rung is the
first the trial reported at or after it (what the scheduler saw: reports need not fall on the rung step).
Logged on the sweep's parent run beside ``trials.csv``.
"""

from __future__ import annotations

import math

from .schedulers import rung_steps
from .spec import SweepSpec


def scheduler_decisions(client, spec: SweepSpec, rows, runs: dict, train_steps: int):
    """``rows``: the sweep's TrialRows; ``runs``: trial id -> its MLflow run. Empty for ``fifo``."""
    import pandas as pd

    s = spec.scheduler
    columns = ["rung", "trial_id", *spec.space, s.metric, "rank", "decision"]
    if s.kind == "fifo":
        return pd.DataFrame(columns=columns)
    rungs = rung_steps(s.grace_period, s.reduction_factor, train_steps)
    histories = {r.trial_id: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, s.metric))
                 for r in rows if (run := runs.get(r.trial_id)) is not None}
    sign = -1.0 if s.mode == "min" else 1.0
    out = []
    for rung in rungs:
        reached = [(row, _value_at(histories[row.trial_id], rung)) for row in rows
                   if row.trial_id in histories and row.steps >= rung]
        ranked = sorted(reached, key=lambda item: -sign * item[1] if not math.isnan(item[1]) else math.inf)
        for rank, (row, value) in enumerate(ranked, start=1):
            last_rung = max((r for r in rungs if r <= row.steps), default=0)
            stopped = row.status == "early_stopped" and rung == last_rung
            out.append({"rung": rung, "trial_id": row.trial_id, **row.point, s.metric: value, "rank": rank,
                        "decision": f"stopped at {rung}" if stopped else "continued"})
    return pd.DataFrame(out, columns=columns)


def _value_at(history: list[tuple[int, float]], rung: int) -> float:
    """The first value reported at or after ``rung`` (NaN if none)."""
    return next((value for step, value in history if step >= rung), math.nan)
