"""Sweep the token budgets: input tokens x target tokens, each trial pretrained and evaluated.

Runbook::

    python experiments/sweep_token_budget.py                  # tiny, CPU: 3 x 2 grid, successive halving (12-14 min)
    python experiments/sweep_token_budget.py --smoke          # 2 trials x 20 steps (checks the wiring)
    python experiments/sweep_token_budget.py --scheduler asha # asynchronous: no pauses, compute depends on order
    python experiments/sweep_token_budget.py --resume         # finish an interrupted sweep
    python experiments/sweep_token_budget.py --grid budget.input_tokens=48,96 --set train.steps=300
    RAY_ADDRESS=auto python experiments/sweep_token_budget.py --profile gpu   # base config, GPU cluster
    mlflow ui --backend-store-uri sqlite:///mlflow.db         # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/token_budget.yaml``
(the built-in benchmark is synthesised into ``data/`` on the first run).
Synchronous successive halving ranks the trials on the online kNN probe of the
fusion features (``probe/fusion/knn_top1``, every 10 steps): all six pause at
step 10, the top two go on to 30, the top one trains to 150 (0.31 of the full
grid's compute at most); the survivor is evaluated (action probes) and the best is chosen on
``eval/action/fusion/knn/top1`` (the linear probe saturates here). The end prints the best trial, the report
path and the ``mlflow ui`` command. Flags: ``--help`` (shared by all sweeps).
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "token_budget.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
