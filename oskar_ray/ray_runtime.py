"""The Ray runtime of every OSKAR command: start or join Ray, resources, worker start-up, quiet logs.

Runbook::

    from oskar_ray import ray_runtime
    ray_runtime.init_ray()                                   # join $RAY_ADDRESS, or a quiet local Ray
    ray_runtime.init_ray(for_sweep=True, trial_slots=6, concurrent_trials=2)   # a local sweep cluster
    ray_runtime.in_ray_worker()                              # False in the driver, True in tasks and actors

Everything this project asks of Ray's runtime is here (a sweep's trial sizing aside: ``tune/cluster.py``; Ray
Data's scheduling-loop pacer: ``data_pacer.py``), so a Ray upgrade is checked in two places. The public Ray API
covers most of it; what has no public route is named below as a *string* (no private module appears in an import
statement) and checked by ``tests/test_ray_runtime.py``, which fails loudly when a Ray upgrade moves or drops it:

* :data:`STARTUP_CONCURRENCY_ENV`, :data:`IDLE_WORKER_GRACE_ENV`, :data:`PRESTART_ENV` — raylet configs read from
  the environment;
* :data:`INTERNAL_QUIET_ENV`, :data:`INTERNAL_SPEED_ENV`, :data:`LOCAL_CLUSTER_ENV_SWITCHES` — Ray Train / Ray
  Data switches read from the environment but not documented;
* :data:`TRAIN_COORDINATOR_FACTORY` — the one internal *called*: Ray Data's factory of the actor Ray Train's
  controller waits for (:func:`prestart_train_coordinator`; any failure there only forgoes the head start);
* :data:`PLACEMENT_GROUP_CLEANER_LOGGER` and :data:`TRAIN_CONTEXT_MODULE` —
  the names of two Ray Train V2 loggers (not API: their messages are noise here);
* (the two Ray Data internals the pacer names are in ``data_pacer.py``, registered by :func:`budget_data`,
  and checked by ``tests/test_data_pacer.py``).

Everything else is public (``@PublicAPI``, or documented environment variables):
``ray.init`` (``runtime_env`` with ``env_vars`` and a ``worker_process_setup_hook``),
``ray.get_runtime_context()`` (``gcs_address``, ``get_task_id``),
``ray.cluster_resources``, ``ray.data.DataContext`` resource limits, ``RAY_DATA_DISABLE_PROGRESS_BARS``,
``RAY_USAGE_STATS_ENABLED``, ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``. Kept free of heavy imports at module
level: Ray imports the setup hook in every worker process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

from .data_pacer import pace_data_scheduler

#: documented Ray / Tune switches: one progress line per log step instead of a wall of Ray internals
DOCUMENTED_QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
#: read by Ray Train V2 / Ray Data from the environment, but not documented (tests/test_ray_runtime.py checks
#: Ray still reads them): no stdout patching in train workers; Ray Data logs warnings only
INTERNAL_QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_DATA_LOG_LEVEL": "WARNING"}
#: a wind-down knob read from the environment by Ray 2.60, not documented (tests/test_ray_runtime.py checks Ray
#: still reads it): Ray Train V2's controller polls its workers every 2 s, so a finished run waits up to 2 s to be
#: noticed, each attempt to start too; 0.5 s costs a few cheap actor calls a second.
#: (Ray Data's Parquet reader, and with it its footer-actor and read-task knobs, is no longer used: every split is
#: read by the project's own tasks, a shard or row group at a time, data/pipeline.py.)
INTERNAL_SPEED_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
#: what every process of a run gets, unless the variable is exported already
QUIET_ENV = {**DOCUMENTED_QUIET_ENV, **INTERNAL_QUIET_ENV, **INTERNAL_SPEED_ENV}
#: in addition on a local cluster: no preemption watcher (it watches for cloud nodes' preemption notices): one idle
#: actor process less. Every Ray worker process wakes ~100 times a second (a 10-ms timer in Ray's task loop), and on
#: 2 cores each wake-up holds back one of the trainer's two threads (experiments/bench_background.py; freezing this
#: actor alone: 1.02 on the tiny step, one run)
LOCAL_CLUSTER_ENV_SWITCHES = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
#: module and function of Ray Data's autoscaling coordinator (named, detached, get-if-exists), which Ray Train V2's
#: controller creates and waits for before it asks for its worker group
TRAIN_COORDINATOR_FACTORY = ("ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator",
                             "get_or_create_autoscaling_coordinator")

#: how many worker processes a raylet starts at once: a raylet config (ray_config_def.h) read from the environment
#: as ``RAY_<name>`` — an internal knob, not a public API: a Ray upgrade that drops it brings the warnings back
#: (tests/test_train_ray.py::test_a_local_ray_is_quiet_knows_its_cluster_and_is_sized_for_its_trials fails)
STARTUP_CONCURRENCY_ENV = "RAY_worker_maximum_startup_concurrency"
#: how long the local raylet lets an idle worker process above its soft limit (its logical CPUs) live: a raylet
#: config read from the environment, like the one above. Ray's 1 s ends a data task's worker each time the stream
#: waits on the trainer for a second; on 2 cores the stream's two workers and Ray's two pre-started ones (before
#: PRESTART_ENV) were over the limit, and a small split (short tasks, gaps between them) restarted a worker every
#: ~15 s, each start importing torch (~2.5 s of a core) beside the trainer, at half speed meanwhile
#: (experiments/bench_data.py --dataset-size, docs/results.md "Twelfth pass"). A minute spans a backpressured
#: stream's gaps and still frees a finished run's workers.
IDLE_WORKER_GRACE_ENV, IDLE_WORKER_GRACE_MS = "RAY_idle_worker_killing_time_threshold_ms", 60_000
#: whether the local raylet starts a worker per core for the first driver: a raylet config read from the
#: environment, like the two above. They start without this project's runtime environment (``init_ray``), so no
#: task or actor of a run can use them: two idle processes on 2 cores, each waking ~100 times a second beside
#: the trainer (docs/results.md, ninth pass), and ~0.3 s of a core each to boot while Ray starts. Off.
PRESTART_ENV = "RAY_prestart_worker_first_driver"
#: Python processes one running trial keeps: Ray Train V2's controller, dataset manager, synchronisation,
#: placement-group cleaner actors, the train worker, the Tune function, Ray Data's split coordinator (several
#: workers only) and its preprocessing tasks, a stopped trial's evaluation (measured: 38 for 2 trials, when the
#: preemption watcher still ran locally), with room
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
#: set in the workers of a local Ray without dashboard: the setup hook silences the placement-group cleaner there
NO_DASHBOARD_ENV = "OSKAR_RAY_NO_DASHBOARD"
#: set in the workers of a local Ray this project started (the setup hook gives every worker $RAY_ADDRESS, so that
#: alone cannot tell a sweep trial on a laptop from one on a cluster that may grow)
LOCAL_CLUSTER_ENV = "OSKAR_RAY_LOCAL_CLUSTER"


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
    CPUs until the next trials wait forever. So sweeps start the dashboard, and
    every worker exports its own cluster's address as ``RAY_ADDRESS``
    (:func:`setup_worker_process`); and sweeps declare :data:`SWEEP_CPU_FACTOR` logical CPUs per
    core, because each trial reserves CPUs for its driver and trainer and Ray
    Data would otherwise find none left for its tasks and hang (concurrency
    is capped by physical cores instead, ``tune.cluster.concurrent_trials``).
    ``trial_slots``: that many units of the custom resource :data:`TRIAL_SLOT`,
    one per running trial (a paused trial holds none). ``concurrent_trials``
    sizes the local raylet's worker start-up (:func:`startup_concurrency`); a local raylet also keeps idle
    worker processes a minute (:data:`IDLE_WORKER_GRACE_ENV`) and starts none ahead (:data:`PRESTART_ENV`).
    """
    import ray

    configure_environment()
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    env = {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}
    # a local cluster without the dashboard saves ~0.5 GB on a laptop; a sweep's needs it (see above)
    local_sweep = for_sweep and not address
    kwargs: dict = {}
    if local_sweep:
        kwargs = {"include_dashboard": True, "num_cpus": SWEEP_CPU_FACTOR * (os.cpu_count() or 1)}
        if trial_slots:
            kwargs["resources"] = {TRIAL_SLOT: trial_slots}
    elif not address:
        kwargs = {"include_dashboard": False}
        env[NO_DASHBOARD_ENV] = "1"
    if not address:
        env[LOCAL_CLUSTER_ENV] = "1"
        env.update({k: os.environ.get(k, v) for k, v in LOCAL_CLUSTER_ENV_SWITCHES.items()})
    runtime_env = {"env_vars": env, "worker_process_setup_hook": f"{__name__}.setup_worker_process"}
    # read by the local raylet at start; an exported value wins
    raylet = {STARTUP_CONCURRENCY_ENV: str(startup_concurrency(concurrent_trials)),
              IDLE_WORKER_GRACE_ENV: str(IDLE_WORKER_GRACE_MS), PRESTART_ENV: "0"}
    sized = {} if address else {k: v for k, v in raylet.items() if k not in os.environ}
    with _exported(sized):
        ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env,
                 log_to_driver=log_to_driver, **kwargs)


def prestart_train_coordinator() -> bool:
    """Create, on a local cluster, the coordinator actor Ray Train's controller would create at ``fit()``, so its
    process boots while the driver opens the MLflow run and builds the datasets (a no-op one-worker ``fit()`` on 2
    cores: 9.1 -> 8.2 s, six alternating pairs). True once the actor is requested; False on a joined cluster (the
    controller places it on its own node) and on any failure (a Ray upgrade moved it, the GCS timed out): a
    speed-up only, so the controller then creates it, as before."""
    import ray

    if not ray.is_initialized() or not _on_local_cluster():
        return False
    module, name = TRAIN_COORDINATOR_FACTORY
    try:
        getattr(importlib.import_module(module), name)()  # the actor's handle at once; its process boots meanwhile
    except Exception:  # noqa: BLE001 — see the docstring
        logging.getLogger(__name__).debug("the autoscaling coordinator was not created ahead", exc_info=True)
        return False
    return True


def _on_local_cluster() -> bool:
    """A local Ray this project started (from its driver, or a sweep trial on it), not a joined cluster."""
    return not os.environ.get("RAY_ADDRESS") or bool(os.environ.get(LOCAL_CLUSTER_ENV))


def startup_concurrency(concurrent_trials: int) -> int:
    """Worker processes the local raylet may start at once. Its default is the core count (2 on a laptop), and
    the raylet warns each time the live processes pass 4x that ("N PYTHON worker processes have been started
    ... 19x the maximum expected startup concurrency") — which every sweep trial does by design (Ray Train V2
    runs ~8 actors per trial). Sized for the trials that run at once, the warning keeps its meaning: a leak.
    The knob also lets that many processes boot in parallel (they queued before), which a trial's start-up
    does anyway, one actor after another."""
    return max(os.cpu_count() or 1, PROCESSES_PER_TRIAL * max(1, concurrent_trials) // 2)


def setup_worker_process() -> None:
    """The ``worker_process_setup_hook`` of every Ray worker this project starts.

    * ``RAY_ADDRESS`` = this worker's own cluster (``gcs_address``): whatever in the
      worker auto-detects a cluster (Ray Train's placement-group cleaner, through the
      state API) finds this one even when other Ray instances run on the host.
    * Without a dashboard (:data:`NO_DASHBOARD_ENV`): the placement-group cleaner
      cannot reach the state API and would warn once a second for the whole run; on
      a local cluster the run's placement group dies with the cluster anyway, so
      its warnings (:data:`PLACEMENT_GROUP_CLEANER_LOGGER`) say nothing actionable.
    """
    import ray

    if ray.is_initialized():
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    if os.environ.get(NO_DASHBOARD_ENV):
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
    it is only meaningful in workers; the question is ours, so that one record is dropped.
    """
    import ray

    if not ray.is_initialized():
        return False
    _drop_driver_task_id_warning()
    return ray.get_runtime_context().get_task_id() is not None


def _is_not_task_id_warning(record: logging.LogRecord) -> bool:
    return "only available when the process is a worker" not in record.getMessage()


def _drop_driver_task_id_warning() -> None:
    logger = logging.getLogger(RUNTIME_CONTEXT_LOGGER)
    if _is_not_task_id_warning not in logger.filters:
        logger.addFilter(_is_not_task_id_warning)


#: Ray Data preprocessing tasks in flight per sweep trial (tune/trial.py; see budget_data)
DATA_TASKS = 2


#: share of the cluster's object store a run's Ray Data stream may fill when ``data.max_memory_mb`` is 0
DATA_MEMORY_SHARE = 0.25
#: Ray Data's largest block (MB) for a run's datasets, unless its samples are larger (see budget_data)
DATA_BLOCK_MB = 16


def budget_data(cpus: float, memory_mb: float = 0.0, explicit: bool = True,
                block_mb: float = 0.0) -> dict[str, float]:
    """Ray Data's budget for this process's datasets (public ``DataContext`` resource limits), applied by every
    Ray run before it builds its datasets; returns it (``cpu`` 0 = uncapped, ``object_store_mb``).

    ``cpus`` (``data.max_cpus``): logical CPUs for preprocessing, 0 = uncapped. Sweep trials cap by default
    (``tune/trial.py``): left alone, every concurrent trial's pipeline fills all free logical CPUs with
    fractional tasks; a plain pretraining is uncapped (on a small dataset its stream finishes early and the
    trainer then has the cores, ``experiments/bench_dataset_size.py``). ``memory_mb``: object-store memory the
    stream's blocks in flight may hold (``data.max_memory_mb``, or a window sized from the config when not
    ``explicit``: ``data/pipeline.py`` stream_memory_mb), never more than :data:`DATA_MEMORY_SHARE` of the
    cluster's object store unless explicit; 0 = that share. An explicit budget the cluster cannot give is
    refused with the numbers (Ray would wait forever). Also paces Ray Data's scheduling loop
    (``data_pacer.DataSchedulerPacer``)."""
    import ray
    from ray.data import DataContext, ExecutionResources

    resources = ray.cluster_resources() if ray.is_initialized() else {}
    have_cpus, store_mb = resources.get("CPU", 0.0), resources.get("object_store_memory", 0.0) / 2**20
    if cpus and have_cpus and cpus > have_cpus:
        raise ValueError(f"data.max_cpus={cpus} exceeds the {have_cpus:g} logical CPUs of this Ray cluster")
    if explicit and memory_mb and store_mb and memory_mb > store_mb:
        raise ValueError(f"data.max_memory_mb={memory_mb:g} exceeds the {store_mb:.0f} MB object store of this Ray "
                         f"cluster (Ray's object store is a share of the machine's memory)")
    share = DATA_MEMORY_SHARE * store_mb
    memory_mb = (memory_mb if explicit else min(memory_mb, share or memory_mb)) if memory_mb else share
    options = DataContext.get_current().execution_options
    old = options.resource_limits  # for_limits: an unspecified field is unlimited (copy() cannot lift a cap)
    options.resource_limits = ExecutionResources.for_limits(
        cpu=cpus or None, gpu=old.gpu, object_store_memory=memory_mb * 2**20 if memory_mb else None,
        memory=old.memory)
    use_block_size(block_mb or DATA_BLOCK_MB)
    pace_data_scheduler()  # every Ray run's datasets: budgeted and paced together
    return {"cpu": cpus, "object_store_mb": memory_mb}


def use_block_size(block_mb: float) -> None:
    """Ray Data's largest block for this process's datasets (the public DataContext field). Ray's default, 128 MB,
    is ~650 preprocessed 16 x 32^2 clips: the first block (and the first training batch) waited for all of them;
    16 MB is ~80 clips, a few training batches (a run's size: ``data/pipeline.py`` stream_block_mb)."""
    from ray.data import DataContext

    DataContext.get_current().target_max_block_size = int(block_mb * 2**20)


def check_workers_fit(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> None:
    """Refuse, with the numbers, a worker group a local Ray this project started can never place (from its
    driver or from a sweep trial on it): Ray Train would wait for the resources forever. A cluster joined
    through ``$RAY_ADDRESS`` may grow (an autoscaler), so it is left to Ray."""
    import ray

    if not _on_local_cluster() or not ray.is_initialized():
        return
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if num_workers * cpus_per_worker > cpus:
        raise ValueError(f"train.num_workers={num_workers} x train.cpus_per_worker={cpus_per_worker:g} = "
                         f"{num_workers * cpus_per_worker:g} CPUs, but this local Ray cluster has {cpus:g}")
    if use_gpu and num_workers > gpus:
        raise ValueError(f"train.use_gpu with train.num_workers={num_workers} needs {num_workers} GPUs; this "
                         f"local Ray cluster has {gpus:g}")


@contextlib.contextmanager
def _exported(values: dict[str, str]):
    """Environment variables a starting local Ray reads, unset again once it runs."""
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)
