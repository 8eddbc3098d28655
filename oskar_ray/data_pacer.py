"""Pacing Ray Data's scheduling loop: no spin while the stream is backpressured, no cap when it flows.

Runbook::

    from oskar_ray import data_pacer
    data_pacer.pace_data_scheduler()    # this process's datasets built afterwards are paced (ray_runtime.budget_data
                                        # calls it for every Ray run)
    python experiments/bench_data.py --pacer    # the pacer against Ray's loop alone and a pacer pacing every step

Ray Data's streaming executor (2.60) waits in ``ray.wait(..., timeout=0.1)`` only while tasks run and have no
ready output: once every operator is backpressured (the trainer holds its prefetch window, nothing may start)
its loop spins where the executor runs (a ``SplitCoordinator`` actor, or a one-worker run's train worker): 56 %
of a core beside a 2-thread trainer, whose step took 2.4x (pacing it took the tiny trainer from 35 to 82
samples/s). :class:`DataSchedulerPacer` sleeps only in a spin. Pacing every step instead, as first built,
capped a fast consumer's stream at 0.07-0.13x Ray's loop, 0.20-0.63x data-bound (docs/results.md, "Fourteenth
pass").

Two Ray Data internals are named here, as strings, each checked by ``tests/test_data_pacer.py``:
:data:`EXECUTION_CALLBACKS_FIELD` (how the pacer reaches the executor) and :data:`EXECUTOR_TOPOLOGY_FIELD` (where
it reads progress; unreadable, the pacer warns and paces the fast steps, from a full period).
"""

from __future__ import annotations

import time
import warnings

#: the shortest step of the loop once it has spun a while (Ray's own wait)
SCHEDULING_LOOP_PERIOD_S = 0.1
#: the first spinning step's: short, since a step that pulls a block looks idle (Ray 2.60 fetches its metadata on a
#: thread and emits it the step after) and pacing it would delay a data-bound stream
SCHEDULING_LOOP_FIRST_PERIOD_S = 0.01
#: the DataContext field through which Ray Data 2.60 instantiates execution callbacks (``cls()``, then
#: ``on_execution_step(executor)`` once per scheduling-loop step, in the executor's thread): a dataclass field of
#: the public DataContext, not documented
EXECUTION_CALLBACKS_FIELD = "custom_execution_callback_classes"
#: the streaming executor's attribute holding its operators and their states (``{operator: OpState}``)
EXECUTOR_TOPOLOGY_FIELD = "_topology"


class DataSchedulerPacer:
    """A step that moved data (:func:`stream_progress` changed) is not slowed. A step that moved nothing:

    * returned before its period — the spin: sleeps the rest, and the period doubles (from
      :data:`SCHEDULING_LOOP_FIRST_PERIOD_S` up to :data:`SCHEDULING_LOOP_PERIOD_S`), so a backpressured loop
      wakes ~10 times a second;
    * took its period mostly off the CPU — Ray's own ``ray.wait``, where a block may have been pulled: not slowed,
      and the period restarts, so the block is emitted at once;
    * took its period mostly on the CPU — a slow spin: the period doubles, so the next fast step sleeps."""

    def __init__(self) -> None:
        self._last = 0.0
        self._last_cpu: float | None = None  # of the executor's thread (``before_execution_starts`` runs in another)
        self._progress: tuple | None = None
        self._period = SCHEDULING_LOOP_PERIOD_S

    def before_execution_starts(self, executor) -> None:
        self._last = time.perf_counter()

    def on_execution_step(self, executor) -> None:
        progress = stream_progress(executor)
        wall = time.perf_counter() - self._last
        cpu = 0.0 if self._last_cpu is None else time.thread_time() - self._last_cpu
        if progress is not None and progress != self._progress:
            self._period = SCHEDULING_LOOP_FIRST_PERIOD_S
        elif wall < self._period:
            time.sleep(self._period - wall)
            self._period = min(2 * self._period, SCHEDULING_LOOP_PERIOD_S)
        elif cpu < wall / 2:
            self._period = SCHEDULING_LOOP_FIRST_PERIOD_S
        else:
            self._period = min(2 * self._period, SCHEDULING_LOOP_PERIOD_S)
        self._progress = progress
        self._last, self._last_cpu = time.perf_counter(), time.thread_time()

    def after_execution_succeeds(self, executor) -> None:
        pass

    def after_execution_fails(self, executor, error) -> None:
        pass


def stream_progress(executor) -> tuple | None:
    """What changes whenever Ray Data's executor moves data — per operator: outputs taken, task outputs read,
    tasks submitted, blocks queued in and out (Ray 2.60's ``NoProgressGuard`` counts the first and the last two)
    — or None, with a warning, where the executor's topology cannot be read: an error raised here would fail the
    dataset (the executor's loop raises what its callbacks raise)."""
    try:
        progress = []
        for op, state in getattr(executor, EXECUTOR_TOPOLOGY_FIELD).items():
            m = op.metrics  # a property that builds its extras on each read
            progress.append((m.num_outputs_taken, m.num_task_outputs_generated, m.num_tasks_submitted,
                             state.total_enqueued_input_blocks(), state.total_enqueued_output_blocks()))
        return tuple(progress)
    except Exception as err:  # any: a Ray upgrade must cost the pacer's precision, not the run
        # no error text in the message: Python's default filter then shows it once per process and error type
        warnings.warn(f"Ray Data's executor progress is unreadable ({type(err).__name__}): every fast scheduling "
                      "step is paced, capping a fast consumer's stream (oskar_ray/data_pacer.py)", RuntimeWarning,
                      stacklevel=1)
        return None


def pace_data_scheduler() -> None:
    """Register :class:`DataSchedulerPacer` in this process's DataContext (datasets built afterwards carry it
    to wherever their executor runs: the driver, a Ray Train ``SplitCoordinator``, a one-worker run's worker)."""
    from ray.data import DataContext

    callbacks = getattr(DataContext.get_current(), EXECUTION_CALLBACKS_FIELD)
    if DataSchedulerPacer not in callbacks:
        callbacks.append(DataSchedulerPacer)
