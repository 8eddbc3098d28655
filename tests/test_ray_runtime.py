"""The Ray runtime module: the Ray internals it names still exist (the pacer's: tests/test_data_pacer.py); nothing
private is imported by name anywhere in the package."""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from pathlib import Path

import pytest

from oskar_ray import data_pacer, ray_runtime

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
    assert not private, ("private Ray APIs break on minor releases; use a public one, or name it as a string in "
                         "ray_runtime / data_pacer with a test:\n" + "\n".join(sorted(set(private))))


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
        assert data_pacer.DataSchedulerPacer in getattr(context, data_pacer.EXECUTION_CALLBACKS_FIELD)
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
