"""Ray Data's scheduling-loop pacer: each rule on a fake clock and topology, then on a real stream."""

from __future__ import annotations

import time

import pytest

from oskar_ray import data_pacer

FIRST, PERIOD = data_pacer.SCHEDULING_LOOP_FIRST_PERIOD_S, data_pacer.SCHEDULING_LOOP_PERIOD_S


class _Clock:
    """Wall and executor-thread CPU time the test advances; the pacer's sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.sleeps = 0.0, 0.0, []

    def perf_counter(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds


class _Operator:
    def __init__(self) -> None:
        self.metrics = type("Metrics", (), {"num_outputs_taken": 0, "num_task_outputs_generated": 0,
                                            "num_tasks_submitted": 0})()


class _State:
    def total_enqueued_input_blocks(self) -> int:
        return 0

    def total_enqueued_output_blocks(self) -> int:
        return 0


class _Executor:
    def __init__(self) -> None:
        self.operator = _Operator()
        self._topology = {self.operator: _State()}

    def take_an_output(self) -> None:
        self.operator.metrics.num_outputs_taken += 1


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(data_pacer, "time", fake)
    return fake


def _step(pacer, clock: _Clock, executor, wall: float, cpu: float | None = None) -> float:
    """One scheduling step of ``wall`` seconds (``cpu`` of them on the CPU; all by default); returns its sleep."""
    clock.wall += wall
    clock.cpu += wall if cpu is None else cpu
    slept = len(clock.sleeps)
    pacer.on_execution_step(executor)
    return sum(clock.sleeps[slept:])


def test_a_spinning_loop_backs_off_to_ten_steps_a_second_and_a_step_that_moved_data_restarts_it(clock):
    pacer, executor = data_pacer.DataSchedulerPacer(), _Executor()
    pacer.before_execution_starts(executor)
    _step(pacer, clock, executor, 0.001)  # the first step reads the topology: progress
    spin = [_step(pacer, clock, executor, 0.001) for _ in range(6)]
    assert spin == pytest.approx([FIRST - 0.001, 2 * FIRST - 0.001, 4 * FIRST - 0.001, 8 * FIRST - 0.001,
                                  PERIOD - 0.001, PERIOD - 0.001])
    executor.take_an_output()
    assert _step(pacer, clock, executor, 0.001) == 0  # moved data: not slowed
    assert _step(pacer, clock, executor, 0.001) == pytest.approx(FIRST - 0.001)  # the back-off starts again


def test_a_step_where_ray_waited_is_not_slowed_and_restarts_the_period(clock):
    """Ray's own ``ray.wait`` (off the CPU) took the period: a block it pulled is emitted only at the next step,
    which must not wait a long period."""
    pacer, executor = data_pacer.DataSchedulerPacer(), _Executor()
    pacer.before_execution_starts(executor)
    for _ in range(6):
        _step(pacer, clock, executor, 0.001)  # spun up to the full period
    assert _step(pacer, clock, executor, 1.05 * PERIOD, cpu=0.001) == 0
    assert _step(pacer, clock, executor, 0.001) == pytest.approx(FIRST - 0.001)


def test_slow_steps_that_move_nothing_are_paced_too(clock):
    """Steps longer than the first period, all on the CPU (a busy executor thread), still settle at ~10 a
    second rather than running back to back."""
    pacer, executor = data_pacer.DataSchedulerPacer(), _Executor()
    pacer.before_execution_starts(executor)
    _step(pacer, clock, executor, 0.015)
    started = clock.wall
    for _ in range(20):
        _step(pacer, clock, executor, 0.015)
    assert 20 / (clock.wall - started) < 12


def test_a_pacer_that_cannot_read_progress_warns_and_paces_every_fast_step(clock):
    """A Ray upgrade that hides the executor's topology must not fail the dataset: the pacer warns and paces
    the fast steps, from a full period (as first built: no spin, but a capped stream)."""
    pacer = data_pacer.DataSchedulerPacer()
    pacer.before_execution_starts(object())
    with pytest.warns(RuntimeWarning, match="progress is unreadable"):
        sleeps = [_step(pacer, clock, object(), 0.001) for _ in range(3)]
    assert sleeps == pytest.approx([PERIOD - 0.001] * 3)


def test_ray_data_still_calls_execution_callbacks_registered_in_the_data_context(ray_local, monkeypatch):
    """The pacer reaches Ray Data through an undocumented DataContext field: a Ray upgrade that drops it (or
    stops calling its classes once per scheduling step) would bring back the spinning scheduler; this fails
    first."""
    import ray
    from ray.data import DataContext

    steps = []
    original = data_pacer.DataSchedulerPacer.on_execution_step
    monkeypatch.setattr(data_pacer.DataSchedulerPacer, "on_execution_step",
                        lambda self, executor: (steps.append(1), original(self, executor)))
    data_pacer.pace_data_scheduler()
    assert data_pacer.DataSchedulerPacer in getattr(DataContext.get_current(), data_pacer.EXECUTION_CALLBACKS_FIELD)
    assert ray.data.range(64, override_num_blocks=4).map_batches(lambda b: b).count() == 64
    assert steps, "Ray Data no longer calls the execution callbacks of its DataContext"


def test_on_a_real_stream_an_idle_loop_is_paced_and_a_step_that_moved_data_is_not(ray_local):
    """A consumer that stops for a second (a CPU trainer's step): the backpressured loop wakes ~10-15 times in it,
    not thousands. A step that moved blocks is not followed by a sleep: pacing every step capped a fast
    consumer's stream (``experiments/bench_pacer.py``). The executor's progress must be readable: a Ray upgrade
    that hides it would silently bring the cap back."""
    import numpy as np
    import ray
    from ray.data import DataContext

    from oskar_ray import ray_runtime

    steps = []  # (progress, moved since the last step, seconds spent in the pacer, when)

    class Recording(data_pacer.DataSchedulerPacer):
        def on_execution_step(self, executor) -> None:
            before, started = self._progress, time.perf_counter()
            super().on_execution_step(executor)
            steps.append((self._progress, self._progress != before, time.perf_counter() - started, started))

    def read(batch):
        for _ in range(10):
            yield {"x": np.ones((16, 16384), dtype=np.float32)}  # 1 MB blocks, 40 MB in all

    context = DataContext.get_current()
    callbacks = getattr(context, data_pacer.EXECUTION_CALLBACKS_FIELD)
    saved = (context.execution_options.resource_limits, context.target_max_block_size, list(callbacks))
    # 1 MB blocks (Ray merges a task's yields up to the block size) in a window of 8: the stream backpressures
    # while the consumer waits
    ray_runtime.budget_data(0.0, 8.0, block_mb=1.0)
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
    assert max(spent for _, moved, spent, _ in steps if moved) < PERIOD / 2
    assert len([when for *_, when in steps if stalled <= when < resumed]) <= 30  # unpaced: thousands
