"""Ablate the modalities (the 'adding modalities' table): video, + skeleton, + text at fixed budgets.

Runbook::

    python experiments/ablate_modalities.py                  # 3 trials, each to the end (tiny model, CPU)
    python experiments/ablate_modalities.py --smoke          # 2 short trials: checks the wiring in minutes
    python experiments/ablate_modalities.py --resume         # finish an interrupted sweep
    python experiments/ablate_modalities.py --grid train.seed=0,1,2   # 3 seeds per row
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/modalities.yaml``. Every trial
pretrains on Ray Train and is evaluated downstream (action probes); the end
prints the best trial, the report path and the ``mlflow ui`` command.
Common flags (``--set``, ``--grid``, ``--num-samples``, ``--max-concurrent``,
``--experiment``, ``--scheduler``): ``--help``.
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "modalities.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
