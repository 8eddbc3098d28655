"""Sweep masking: video mask ratio x masking style (tube / block / random), budgets fixed.

Runbook::

    python experiments/sweep_mask_ratio.py                  # the default grid under ASHA (tiny model, CPU)
    python experiments/sweep_mask_ratio.py --smoke          # 2 short trials: checks the wiring in minutes
    python experiments/sweep_mask_ratio.py --resume         # finish an interrupted sweep
    python experiments/sweep_mask_ratio.py --profile per_modality   # video x skeleton mask ratios
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/mask_ratio.yaml``. Every trial
pretrains on Ray Train and is evaluated downstream (action probes); the end
prints the best trial, the report path and the ``mlflow ui`` command.
Common flags (``--set``, ``--grid``, ``--num-samples``, ``--max-concurrent``,
``--experiment``, ``--scheduler``): ``--help``.
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "mask_ratio.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
