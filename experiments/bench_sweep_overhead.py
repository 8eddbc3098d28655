"""What a sweep spends beside its trials' compute: the smoke sweep's wall vs its trials' training + evaluation.

Runbook::

    python experiments/bench_sweep.py --smoke        # 2 trials x 20 tiny steps, evaluated, report (~3 min)

Runs ``experiments/sweep_token_budget.py --smoke`` as a whole command (its own MLflow store and output
directory in a temporary folder; the built-in benchmark in ``data/``, synthesised first if absent) and reads
back, per trial, the seconds of its training steps (``time/first_step_s`` + ``time/steps_s``), of its
downstream evaluation (``time/eval_s``) and of each start-up stage (``time/<stage>_s``,
oskar_ray/train/timeline.py). Prints the wall, the summed compute, their ratio and where the rest went.

Goal (issue 29): sweep wall <= 3x the summed training + evaluation compute of its trials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_overhead import ensure_dataset

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "experiments" / "sweep_token_budget.py"
COMPUTE = ("first_step", "steps", "eval")
STARTUP = ("ray_init", "tracking", "datasets", "worker_start", "model", "monitor", "first_batch", "wind_down",
           "artifacts")


def trial_times(exp_dir: Path) -> list[dict[str, float]]:
    from mlflow.tracking import MlflowClient

    state = json.loads((exp_dir / "oskar_sweep.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    return [{k[len("time/"):-len("_s")]: v for k, v in r.data.metrics.items() if k.startswith("time/")}
            for r in runs]


def main(argv: list[str] | None = None) -> None:
    os.chdir(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(SWEEP), "--smoke", "--storage-path", f"{tmp}/sweeps",
                   "--set", f"tracking.uri=sqlite:///{tmp}/mlflow.db", *(argv or [])]
        ensure_dataset("experiments/configs/tiny.yaml", [])
        started = time.perf_counter()
        out = subprocess.run(command, text=True, capture_output=True)
        wall = time.perf_counter() - started
        if out.returncode:
            sys.exit(f"smoke sweep failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("sweep directory: "))
        trials = trial_times(Path(line.removeprefix("sweep directory: ").strip()))
    compute = sum(t.get(k, 0.0) for t in trials for k in COMPUTE)
    print(f"smoke sweep: {len(trials)} trials, wall {wall:.1f} s (whole command)")
    print(f"  summed over the trials (they run side by side): training steps "
          f"{sum(t.get('first_step', 0) + t.get('steps', 0) for t in trials):.1f} s, evaluation "
          f"{sum(t.get('eval', 0) for t in trials):.1f} s -> compute {compute:.1f} s")
    print("  start-up / wind-down per trial, summed: " +
          ", ".join(f"{k} {sum(t.get(k, 0.0) for t in trials):.1f}" for k in STARTUP))
    print("  (a trial the scheduler stops, or the part of a paused trial before its pause, logs no stage times: "
          "those steps are left out of the compute, which can only raise the ratio)")
    print(f"sweep wall / trial compute: {wall / max(compute, 1e-9):.2f} (goal <= 3)")


if __name__ == "__main__":
    main()
