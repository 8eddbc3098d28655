"""A sweep's place on its Ray cluster: how many trials train at once, what each reserves, Tune's driver settings,
and the check that the last trial gave its CPUs back.

Runbook::

    from oskar_ray.tune.cluster import concurrent_trials, trial_resources
    concurrent_trials(trial_cpu=0.5, num_workers=1, cpus_per_worker=0.5, data_cpus=1, use_gpu=False, threads=2)
    trial_resources(0.5, slotted=True)     # ({"cpu": 0.5, "oskar_trial_slot": 1}, "") on a local sweep cluster

The cluster itself (started or joined, its environment, Ray Data's budget) is ``oskar_ray.ray_runtime``'s.
Public Ray API only (``ray.cluster_resources`` / ``available_resources``, the documented ``TUNE_GLOBAL_CHECKPOINT_S``
and ``TUNE_DISABLE_STRICT_METRIC_CHECKING``); kept free of heavy imports at module level, like ``ray_runtime``.
"""

from __future__ import annotations

import logging
import os

from ..ray_runtime import TRIAL_SLOT


def configure_tune_driver(save_every_s: int) -> None:
    """The sweep driver's Tune settings (documented environment variables; an exported value wins).

    Tune saves its experiment state at least every ``save_every_s`` seconds (what an interrupted sweep
    resumes from); the early-stopping signal comes every ``eval.online_probe_every`` steps and other reports
    lack it (the schedulers skip them), so Tune must not insist on it in every result; results come from
    memory with Tune's file loggers off, so its warning that it cannot read them is noise.
    """
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(save_every_s))
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def concurrent_trials(trial_cpu: float, num_workers: int, cpus_per_worker: float, data_cpus: float,
                      use_gpu: bool, threads: int, cap: int = 0) -> int:
    """Trials that can train at once. On a cluster (``$RAY_ADDRESS``): its CPUs (and GPUs) over one trial's
    reservation. Locally: physical cores over one trial's torch threads (the local sweep cluster declares
    more logical CPUs than cores, see ``ray_runtime.init_ray``). ``cap``: the sweep's own limit (0 = none)."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        resources = ray.cluster_resources()
        fit = int(resources.get("CPU", 1) // (trial_cpu + num_workers * cpus_per_worker + data_cpus))
        if use_gpu:
            fit = min(fit, int(resources.get("GPU", 0) // num_workers))
    else:
        fit = (os.cpu_count() or 1) // max(1, num_workers * max(threads, 1))
    fit = max(1, fit)
    return min(fit, cap) if cap else fit


def trial_resources(trial_cpu: float, slotted: bool) -> tuple[dict[str, float], str]:
    """A trial's Tune resources, and a note when a wanted :data:`TRIAL_SLOT` is missing on the cluster
    (a cluster that does not declare it: trials then start as its CPUs/GPUs allow)."""
    import ray

    if not slotted:
        return {"cpu": trial_cpu}, ""
    if not ray.cluster_resources().get(TRIAL_SLOT):
        return {"cpu": trial_cpu}, (f"the cluster has no {TRIAL_SLOT!r} resource: trials start as its CPUs/GPUs "
                                    f"allow (declare it on the nodes to cap them)")
    return {"cpu": trial_cpu, TRIAL_SLOT: 1}, ""


def cpus_still_held(wait_s: float = 10.0) -> float:
    """CPUs still reserved on the cluster after ``wait_s`` (Ray Train's placement-group cleaner polls every
    few seconds): on a sweep's own local cluster, anything above 0 after the last trial is a leak."""
    import time

    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.time() + wait_s
    while (held := total - ray.available_resources().get("CPU", 0.0)) > 1e-6 and time.time() < deadline:
        time.sleep(1)
    return max(0.0, held)
