"""Sweep the budget allotment: Dirichlet alpha of the input draw x of the target draw.

Runbook::

    python experiments/sweep_dirichlet_alpha.py                  # the default grid under ASHA (tiny model, CPU)
    python experiments/sweep_dirichlet_alpha.py --smoke          # 2 short trials: checks the wiring in minutes
    python experiments/sweep_dirichlet_alpha.py --resume         # finish an interrupted sweep
    python experiments/sweep_dirichlet_alpha.py --grid budget.cross_modal_share=0,0.5   # a third axis
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/dirichlet_alpha.yaml``. Every trial
pretrains on Ray Train and is evaluated downstream (action probes); the end
prints the best trial, the report path and the ``mlflow ui`` command.
Common flags (``--set``, ``--grid``, ``--num-samples``, ``--max-concurrent``,
``--experiment``, ``--scheduler``): ``--help``.
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "dirichlet_alpha.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
