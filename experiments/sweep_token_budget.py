"""Sweep the token budgets: input tokens x target tokens, each trial pretrained and evaluated.

Runbook::

    python experiments/sweep_token_budget.py                  # tiny, CPU: 3 x 2 grid, successive halving (~14 min)
    python experiments/sweep_token_budget.py --smoke          # 2 trials x 20 steps (checks the wiring)
    python experiments/sweep_token_budget.py --scheduler asha # asynchronous: no pauses, compute depends on order
    python experiments/sweep_token_budget.py --resume         # finish an interrupted sweep
    python experiments/sweep_token_budget.py --grid budget.input_tokens=48,96 --set train.steps=300
    RAY_ADDRESS=auto python experiments/sweep_token_budget.py --profile gpu   # base config, GPU cluster
    mlflow ui --backend-store-uri sqlite:///mlflow.db         # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/token_budget.yaml``
(the built-in benchmark is synthesised into ``data/`` on the first run).
Synchronous successive halving ranks the trials on the online kNN probe of the
video features (``probe/video/knn_top1``): all six pause at step 50, the top two
train on to 150. Every trial is evaluated downstream — action (linear + kNN on video,
skeleton and fusion features), video-text retrieval, VQA — the stopped ones at their
step-50 checkpoint while the others train; the best is chosen on
``eval/action/video/linear/top1``. The end prints the trials table, the time split,
the report path and the ``mlflow ui`` command with the link to the runs table
(13.8 min on 2 cores from a fresh clone). Flags: ``--help`` (shared by all sweeps).
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "token_budget.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
