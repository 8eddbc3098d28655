"""Sweep the EMA targets: start momentum x schedule x per-modality vs shared target encoders.

Runbook::

    python experiments/sweep_ema_momentum.py                  # the default grid under ASHA (tiny model, CPU)
    python experiments/sweep_ema_momentum.py --smoke          # 2 short trials: checks the wiring in minutes
    python experiments/sweep_ema_momentum.py --resume         # finish an interrupted sweep
    python experiments/sweep_ema_momentum.py --grid ema.start=0.98,0.995 --grid ema.per_modality=true
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # parent run + one child run per trial

Grid, schedule and evaluation: ``experiments/configs/sweeps/ema_momentum.yaml``. Every trial
pretrains on Ray Train and is evaluated downstream (action probes); the end
prints the best trial, the report path and the ``mlflow ui`` command.
Common flags (``--set``, ``--grid``, ``--num-samples``, ``--max-concurrent``,
``--experiment``, ``--scheduler``): ``--help``.
"""

import sys
from pathlib import Path

from oskar_ray.tune.cli import sweep_main

SWEEP = Path(__file__).resolve().parent / "configs" / "sweeps" / "ema_momentum.yaml"

if __name__ == "__main__":
    sys.exit(sweep_main(SWEEP, description=__doc__))
