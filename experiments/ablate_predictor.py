"""Ablate the predictor: cross-attention vs concatenated self-attention, x depth x width.

Runbook::

    python experiments/ablate_predictor.py                  # the default grid under ASHA (tiny model, CPU)
    python experiments/ablate_predictor.py --smoke          # 2 short trials: checks the wiring in minutes
    python experiments/ablate_predictor.py --resume         # finish an interrupted sweep
    python experiments/ablate_predictor.py --profile per_modality   # shared vs one predictor per modality
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/predictor.yaml``. Every trial
pretrains on Ray Train and is evaluated downstream (action probes); the end
prints the best trial, the report path and the ``mlflow ui`` command.
Common flags (``--set``, ``--grid``, ``--num-samples``, ``--max-concurrent``,
``--experiment``, ``--scheduler``): ``--help``.
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "predictor.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
