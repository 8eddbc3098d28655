"""The Ray runtime of every OSKAR command: start or join Ray, resources, worker start-up, quiet logs.

Runbook::

    from oskar_ray import ray_runtime
    ray_runtime.init_ray()                                   # join $RAY_ADDRESS, or a quiet local Ray
    ray_runtime.init_ray(for_sweep=True, trial_slots=6, concurrent_trials=2)   # a local sweep cluster
    ray_runtime.in_ray_worker()                              # False in the driver, True in tasks and actors

Everything this project asks of Ray's runtime is here, so a Ray upgrade is
checked in one place. The public Ray API covers all of it except three
internals, each named below as a *string* (nothing private is imported) and
each checked by ``tests/test_ray_runtime.py``, which fails loudly when a Ray
upgrade moves or drops it:

* :data:`STARTUP_CONCURRENCY_ENV` — a raylet config read from the environment;
* :data:`PLACEMENT_GROUP_CLEANER_LOGGER` and :data:`TRAIN_CONTEXT_MODULE` —
  the names of two Ray Train V2 loggers (not API: their messages are noise here).

Everything else is public: ``ray.init`` (``runtime_env`` with ``env_vars`` and
a ``worker_process_setup_hook``), ``ray.util.get_node_ip_address``,
``ray.get_runtime_context``, and environment variables Ray documents
(``RAY_DATA_DISABLE_PROGRESS_BARS``, ``RAY_USAGE_STATS_ENABLED``, ...).
Kept free of heavy imports at module level: Ray imports the setup hook in
every worker process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

#: one progress line per log step instead of a wall of Ray internals; override any by exporting it
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0",
             "RAY_DATA_LOG_LEVEL": "WARNING", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
             "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}

#: how many worker processes a raylet starts at once: a raylet config (ray_config_def.h) read from the environment
#: as ``RAY_<name>`` — an internal knob, not a public API: a Ray upgrade that drops it brings the warnings back
#: (tests/test_train_ray.py::test_a_local_cluster_sized_for_its_trials_prints_no_worker_startup_warnings fails)
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
#: Python processes one running trial keeps: Ray Train V2's controller, dataset manager, synchronisation,
#: preemption watcher and placement-group cleaner actors, the train worker, the Tune function, Ray Data's split
#: coordinator and its preprocessing tasks, a stopped trial's evaluation (measured: 38 for 2 trials), with room
PROCESSES_PER_TRIAL = 20
#: logical CPUs per physical core of a local sweep cluster (see init_ray)
SWEEP_CPU_FACTOR = 2
#: custom resource of a local sweep cluster that caps running trials when paused ones must not count
TRIAL_SLOT = "oskar_trial_slot"

#: Ray Train V2's placement-group cleaner polls the dashboard's state API once a second and warns on every
#: failure when there is no dashboard (a local Ray here): its logger, silenced in workers by the setup hook
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
#: the Ray Train V2 module that logs one INFO line per ``ray.train.report``; it names its logger by file path
TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"
#: the public module whose ``get_task_id`` warns when asked in a driver (where the answer, None, is what we want)
RUNTIME_CONTEXT_LOGGER = "ray.runtime_context"


def configure_environment() -> None:
    """The quiet settings for this process and what it starts (an exported value wins)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(log_to_driver: bool = True, *, for_sweep: bool = False, trial_slots: int = 0,
             concurrent_trials: int = 1) -> None:
    """Connect to ``$RAY_ADDRESS`` or start a quiet local Ray (no-op when already connected).

    ``for_sweep``: a local cluster for Ray Tune trials. When a scheduler kills a
    trial, only Ray Train's ``PlacementGroupCleaner`` frees its workers'
    resources, and it finds the controller through the dashboard's state API by
    auto-detecting the cluster — which fails as soon as another Ray instance runs
    on the host (``Found multiple active Ray instances``), leaking the trial's
    CPUs until the next trials wait forever. So sweeps start the dashboard, pin
    the GCS port and export this cluster's address to every worker as
    ``RAY_ADDRESS``; and they declare :data:`SWEEP_CPU_FACTOR` logical CPUs per
    core, because each trial reserves CPUs for its driver and trainer and Ray
    Data would otherwise find none left for its read tasks and hang (concurrency
    is capped by physical cores instead, see ``oskar_ray.tune.runner``).
    ``trial_slots``: that many units of the custom resource :data:`TRIAL_SLOT`,
    one per running trial (a paused trial holds none). ``concurrent_trials``
    sizes the local raylet's worker start-up (:func:`startup_concurrency`).
    """
    import ray

    if ray.is_initialized():
        return
    configure_environment()
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}
    # a local cluster without the dashboard saves ~0.5 GB on a laptop
    kwargs: dict = {} if address else {"include_dashboard": False}
    pinned = for_sweep and not address
    if pinned:
        port = _free_port()
        env["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        kwargs = {"include_dashboard": True, "num_cpus": SWEEP_CPU_FACTOR * (os.cpu_count() or 1)}
        if trial_slots:
            kwargs["resources"] = {TRIAL_SLOT: trial_slots}
    runtime_env: dict = {"env_vars": env}
    if kwargs.get("include_dashboard") is False:
        runtime_env["worker_process_setup_hook"] = f"{__name__}.silence_placement_group_cleaner"
    started_env = {}
    if pinned:
        started_env["RAY_GCS_SERVER_PORT"] = str(port)  # read by the local head node at start
    if not address and STARTUP_CONCURRENCY_ENV not in os.environ:  # read by the local raylet at start
        started_env[STARTUP_CONCURRENCY_ENV] = str(startup_concurrency(concurrent_trials))
    with _exported(started_env):
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env,
                 log_to_driver=log_to_driver, **kwargs)


def startup_concurrency(concurrent_trials: int) -> int:
    """Worker processes the local raylet may start at once. Its default is the core count (2 on a laptop), and
    the raylet warns each time the live processes pass 4x that ("N PYTHON worker processes have been started
    ... 19x the maximum expected startup concurrency") — which every sweep trial does by design (Ray Train V2
    runs ~8 actors per trial). Sized for the trials that run at once, the warning keeps its meaning: a leak.
    The knob also lets that many processes boot in parallel (they queued before), which a trial's start-up
    does anyway, one actor after another."""
    return max(os.cpu_count() or 1, PROCESSES_PER_TRIAL * max(1, concurrent_trials) // 2)


def silence_placement_group_cleaner() -> None:
    """The ``worker_process_setup_hook`` of a local Ray without dashboard (see :data:`PLACEMENT_GROUP_CLEANER_LOGGER`).

    On a local cluster the run's placement group dies with the cluster anyway, so the
    cleaner's warnings say nothing actionable there.
    """
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def quiet_train_worker_logs() -> None:
    """In a Ray Train worker: our progress line says it all; Ray Train's per-report INFO lines are noise."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    spec = importlib.util.find_spec(TRAIN_CONTEXT_MODULE)
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def in_ray_worker() -> bool:
    """True in a Ray task or actor, False in a driver (or without Ray).

    ``get_task_id`` is None exactly in a driver, where Ray also logs a warning saying
    it is only meaningful in workers; the question is ours, so the warning is muted.
    """
    import ray

    if not ray.is_initialized():
        return False
    logger = logging.getLogger(RUNTIME_CONTEXT_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return ray.get_runtime_context().get_task_id() is not None
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _exported(values: dict[str, str]):
    """Environment variables a starting local Ray reads, unset again once it runs."""
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
