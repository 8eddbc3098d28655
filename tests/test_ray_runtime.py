"""The Ray runtime module: the only Ray internals the package names still exist; nothing private is imported by name."""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from pathlib import Path

import pytest

from oskar_ray import ray_runtime

PACKAGE = Path(__file__).resolve().parents[1] / "oskar_ray"


@pytest.mark.parametrize("module", [ray_runtime.PLACEMENT_GROUP_CLEANER_LOGGER, ray_runtime.TRAIN_CONTEXT_MODULE])
def test_the_ray_internals_named_as_logger_strings_still_exist(module):
    """A Ray upgrade that moves these modules brings their noise back: this fails first, naming the module."""
    assert importlib.util.find_spec(module) is not None, f"{module} is gone: update oskar_ray/ray_runtime.py"


def _private_ray_references(path: Path) -> list[str]:
    """Imports of private Ray modules, attribute chains through them (``ray._private.state``), and private
    Ray module names written as strings."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name):
                names = [".".join([inner.id, *reversed(parts)])]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and path.name != "ray_runtime.py":
            names = re.findall(r"\bray(?:\.\w+)+", node.value)
        found += [n for n in names if n.split(".")[0] == "ray" and any(_private(p) for p in n.split("."))]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # __version__ is public


def test_the_package_uses_no_private_ray_api():
    private = [f"{path.relative_to(PACKAGE.parent)}: {name}" for path in sorted(PACKAGE.rglob("*.py"))
               for name in _private_ray_references(path)]
    assert not private, "private Ray APIs break on minor releases; use a public one or ray_runtime:\n" + \
        "\n".join(sorted(set(private)))


def test_the_undocumented_environment_switches_are_still_read_by_ray():
    """``INTERNAL_QUIET_ENV`` names variables Ray reads but does not document: a Ray upgrade that stops reading
    one brings its noise back; this fails first, naming it."""
    import ray

    sources = [p.read_text(errors="replace") for p in Path(ray.__file__).parent.rglob("*.py")
               if "tests" not in p.parts]
    internal = {**ray_runtime.INTERNAL_QUIET_ENV, **ray_runtime.INTERNAL_SPEED_ENV,
                **ray_runtime.LOCAL_CLUSTER_ENV_SWITCHES}
    missing = [name for name in internal if not any(name in text for text in sources)]
    assert not missing, f"Ray no longer reads {missing}: update oskar_ray/ray_runtime.py"


def test_the_coordinator_ray_train_waits_for_is_still_created_by_the_named_factory():
    """``prestart_train_coordinator`` calls a Ray Data internal by name: a Ray upgrade that moves it, or a Ray Train
    controller that no longer calls it, would silently lose the head start; this fails first, naming it."""
    import ray

    module, name = ray_runtime.TRAIN_COORDINATOR_FACTORY
    assert callable(getattr(importlib.import_module(module), name, None)), f"{module}.{name} is gone"
    train_v2 = Path(ray.__file__).parent / "train" / "v2"
    callers = [p for p in train_v2.rglob("*.py") if "tests" not in p.parts and f"{name}(" in p.read_text()]
    assert callers, f"Ray Train no longer calls {name}: update oskar_ray/ray_runtime.py"


def test_a_runs_ray_asks_for_the_coordinators_head_start(ray_local, smoke_cfg, monkeypatch):
    from oskar_ray.train import ray_trainer

    asked = []
    monkeypatch.setattr(ray_trainer, "prestart_train_coordinator", lambda: asked.append(1) or True)
    ray_trainer.start_ray(smoke_cfg)
    assert asked == [1]


def test_the_coordinators_head_start_is_skipped_on_a_joined_cluster_and_never_fails_a_run(ray_local, monkeypatch):
    """(That a run on a fresh local cluster creates it: tests/test_train_ray.py, the local-Ray subprocess test.)"""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for moved in [("oskar_ray.nowhere", "make"), ("math", "nowhere"), ("math", "sqrt")]:  # gone, gone, raises
        monkeypatch.setattr(ray_runtime, "TRAIN_COORDINATOR_FACTORY", moved)
        assert not ray_runtime.prestart_train_coordinator()
    monkeypatch.setattr(ray_runtime, "TRAIN_COORDINATOR_FACTORY", ("builtins", "print"))  # would succeed if called
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a joined cluster: the controller places it on its node
    monkeypatch.delenv(ray_runtime.LOCAL_CLUSTER_ENV, raising=False)
    assert not ray_runtime.prestart_train_coordinator()


def test_in_ray_worker_is_false_in_the_driver_and_true_in_tasks_and_actors(ray_local, caplog):
    import ray

    @ray.remote(num_cpus=0)
    def in_task() -> bool:
        return ray_runtime.in_ray_worker()

    @ray.remote(num_cpus=0)
    class Probe:
        def ask(self) -> bool:
            return ray_runtime.in_ray_worker()

    with caplog.at_level(logging.WARNING):
        assert ray_runtime.in_ray_worker() is False
    assert not [r for r in caplog.records if "only available when the process is a worker" in r.getMessage()]
    assert ray.get(in_task.remote()) is True
    assert ray.get(Probe.remote().ask.remote()) is True


def test_startup_concurrency_grows_with_the_trials_that_run_at_once():
    one, four = ray_runtime.startup_concurrency(1), ray_runtime.startup_concurrency(4)
    assert four >= 2 * ray_runtime.PROCESSES_PER_TRIAL and four > one >= 1


def test_ray_data_still_calls_execution_callbacks_registered_in_the_data_context(ray_local, monkeypatch):
    """The pacer reaches Ray Data through an undocumented DataContext field: a Ray upgrade that drops it (or
    stops calling its classes once per scheduling step) would bring back the spinning scheduler; this fails
    first."""
    import ray
    from ray.data import DataContext

    steps = []
    original = ray_runtime.DataSchedulerPacer.on_execution_step
    monkeypatch.setattr(ray_runtime.DataSchedulerPacer, "on_execution_step",
                        lambda self, executor: (steps.append(1), original(self, executor)))
    ray_runtime.pace_data_scheduler()
    assert ray_runtime.DataSchedulerPacer in getattr(DataContext.get_current(), ray_runtime.EXECUTION_CALLBACKS_FIELD)
    assert ray.data.range(64, override_num_blocks=4).map_batches(lambda b: b).count() == 64
    assert steps, "Ray Data no longer calls the execution callbacks of its DataContext"


def test_the_pacer_holds_an_idle_loop_to_its_period_and_never_slows_a_step_that_moved_data(ray_local):
    """A consumer that stops for a second (a CPU trainer's step): the backpressured loop wakes ~10-15 times in it,
    not thousands. A step that moved blocks is not followed by a sleep: pacing every step capped a fast
    consumer's stream (``experiments/bench_pacer.py``). The executor's progress must be readable: a Ray upgrade
    that hides it would silently bring the cap back."""
    import time

    import numpy as np
    import ray
    from ray.data import DataContext

    steps = []  # (progress, moved since the last step, seconds spent in the pacer, when)

    class Recording(ray_runtime.DataSchedulerPacer):
        def on_execution_step(self, executor) -> None:
            before, started = self._progress, time.perf_counter()
            super().on_execution_step(executor)
            steps.append((self._progress, self._progress != before, time.perf_counter() - started, started))

    def read(batch):
        for _ in range(10):
            yield {"x": np.ones((16, 16384), dtype=np.float32)}  # 1 MB blocks, 40 MB in all

    context = DataContext.get_current()
    callbacks = getattr(context, ray_runtime.EXECUTION_CALLBACKS_FIELD)
    saved = (context.execution_options.resource_limits, context.target_max_block_size, list(callbacks))
    ray_runtime.budget_data(0.0, 8.0)  # a window of 8 blocks: the stream backpressures while the consumer waits
    callbacks[:] = [Recording]
    try:
        dataset = ray.data.from_items(list(range(4)), override_num_blocks=4).map_batches(
            read, batch_size=1, num_cpus=0.5, compute=ray.data.TaskPoolStrategy(size=1))
        batches = iter(dataset.iter_batches(batch_size=16, prefetch_batches=1))
        next(batches)
        stalled = time.perf_counter()
        time.sleep(1.0)
        resumed = time.perf_counter()
        rest = sum(1 for _ in batches)
    finally:
        context.execution_options.resource_limits, context.target_max_block_size, callbacks[:] = saved
    assert rest == 39 and steps and all(progress is not None for progress, *_ in steps)
    # a step paced after it moved data would sleep most of a period
    assert max(spent for _, moved, spent, _ in steps if moved) < ray_runtime.SCHEDULING_LOOP_PERIOD_S / 2
    assert len([when for *_, when in steps if stalled <= when < resumed]) <= 30  # unpaced: thousands


def test_a_pacer_that_cannot_read_progress_warns_and_paces_every_step():
    """A Ray upgrade that hides the executor's topology must not fail the dataset: the pacer warns and falls back
    to full periods (as first built: no spin, but a capped stream)."""
    import time

    pacer = ray_runtime.DataSchedulerPacer()
    pacer.before_execution_starts(object())
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="progress is unreadable"):
        for _ in range(3):
            pacer.on_execution_step(object())
    assert time.perf_counter() - started >= 3 * ray_runtime.SCHEDULING_LOOP_PERIOD_S * 0.99


def test_a_data_budget_the_cluster_cannot_give_is_refused_with_the_numbers(ray_local):
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.execution_options.resource_limits, context.target_max_block_size)
    cpus = ray.cluster_resources()["CPU"]
    try:
        with pytest.raises(ValueError, match=rf"data.max_cpus=99.0 exceeds the {cpus:g} logical CPUs"):
            ray_runtime.budget_data(99.0)
        with pytest.raises(ValueError, match=r"data.max_memory_mb=1e\+07 exceeds the \d+ MB object store"):
            ray_runtime.budget_data(0.0, 1e7)
        budget = ray_runtime.budget_data(0.5, 1e7, explicit=False)  # a default window is capped, not refused
        limits = context.execution_options.resource_limits
        assert limits.cpu == 0.5 and 0 < budget["object_store_mb"] < 1e7
        assert limits.object_store_memory == pytest.approx(budget["object_store_mb"] * 2**20)
        assert context.target_max_block_size == ray_runtime.DATA_BLOCK_MB * 2**20
        assert ray_runtime.DataSchedulerPacer in getattr(context, ray_runtime.EXECUTION_CALLBACKS_FIELD)
    finally:
        context.execution_options.resource_limits, context.target_max_block_size = saved


def test_a_worker_group_the_local_cluster_cannot_place_is_refused_with_the_numbers(ray_local, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = ray.cluster_resources()["CPU"]
    with pytest.raises(ValueError, match=rf"train.num_workers=2 x train.cpus_per_worker=8 = 16 CPUs, but this "
                                         rf"local Ray cluster has {cpus:g}"):
        ray_runtime.check_workers_fit(2, 8.0, False)
    with pytest.raises(ValueError, match="needs 1 GPUs; this local Ray cluster has 0"):
        ray_runtime.check_workers_fit(1, 0.5, True)
    ray_runtime.check_workers_fit(1, 0.5, False)
