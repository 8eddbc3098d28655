"""What the scheduler decided at each rung, rebuilt from the trials' MLflow runs (``scheduler_decisions.csv``).

Runbook::

    frame = scheduler_decisions(client, spec, rows, runs, train_steps)   # one row per (rung, trial that reached it)
    frame[["rung", "trial_id", "probe/video/knn_top1", "rank", "decision"]]

Rebuilt rather than recorded: a sweep resumed after its driver died has no memory of the decisions made before,
but every trial's run keeps the signal it reported at each step and how far it trained (``steps_trained``). A
trial that trained past a rung continued there; one whose training ended at the rung was stopped there.
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
    out = []
    for rung in rung_steps(s.grace_period, s.reduction_factor, train_steps):
        reached = []
        for row in rows:
            run = runs.get(row.trial_id)
            if run is None or row.steps < rung:
                continue
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, s.metric)}
            reached.append((row, history.get(rung, math.nan)))
        sign = -1.0 if s.mode == "min" else 1.0
        ranked = sorted(reached, key=lambda item: -sign * item[1] if not math.isnan(item[1]) else math.inf)
        for rank, (row, value) in enumerate(ranked, start=1):
            decision = "continued" if row.steps > rung else f"stopped at {rung}"
            out.append({"rung": rung, "trial_id": row.trial_id, **row.point, s.metric: value, "rank": rank,
                        "decision": decision})
    return pd.DataFrame(out, columns=columns)
