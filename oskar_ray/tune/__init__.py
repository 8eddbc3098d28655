"""Ray Tune sweeps over OSKAR configs: each trial pretrains on Ray Train and is evaluated downstream.

Runbook::

    python experiments/sweep_token_budget.py                 # the default sweep (CPU, 12-14 min on 2 cores)
    python experiments/sweep_token_budget.py --smoke         # 2 short trials
    python experiments/sweep_token_budget.py --resume        # finish an interrupted sweep

    from oskar_ray.tune import load_spec, run_sweep
    outcome = run_sweep(load_spec("experiments/configs/sweeps/token_budget.yaml", profile="smoke"))

Modules: ``spec`` (sweep YAML, profiles, grid validation), ``trial`` (the Tune
function trainable), ``runner`` (Tuner / restore, parent run), ``schedulers``
(synchronous successive halving / ASHA on steps, on Tune's public scheduler API),
``stopped_trials`` (every stopped trial evaluated at its stop checkpoint),
``decisions`` (what the scheduler decided, rebuilt from the runs), ``watchdog``
(a stalled sweep errors instead of hanging), ``cluster`` (trials at once, a trial's resources, Tune's
driver settings, the CPU-leak check), ``results`` (summary, MLflow,
report), ``flops`` (FLOPs per step from the config), ``cli`` (``oskar sweep
SPEC.yaml`` and its flags). The signal the schedulers rank on is the online kNN
probe pretraining reports (:mod:`oskar_ray.probes.online`).

Only light modules are imported here (the submodules load on first use).
"""

from __future__ import annotations

from typing import Any

__all__ = ["flops_per_step", "load_spec", "run_sweep", "sweep_main"]


def __getattr__(name: str) -> Any:
    if name == "flops_per_step":
        from .flops import flops_per_step

        return flops_per_step
    if name == "load_spec":
        from .spec import load_spec

        return load_spec
    if name == "run_sweep":
        from .runner import run_sweep

        return run_sweep
    if name == "sweep_main":
        from .cli import sweep_main

        return sweep_main
    raise AttributeError(name)
