"""A sweep that can no longer make progress ends with an error instead of hanging.

Under synchronous halving a paused trial restarts only when the scheduler lets it
go on. Should the scheduler never do so (a bookkeeping bug: one such, a report past
two rungs at once, hung CI for 7 minutes), Tune waits forever with nothing running:
no error, no output. :class:`StallWatchdog` (a Tune callback in the driver) watches
for exactly that state — unfinished trials, every one of them paused, none running or
about to start — and after ``grace_s`` raises :class:`SweepStalled`, naming the trials.
Tune has saved the experiment state by then: ``--resume`` continues the sweep.

A trial waiting paused at a rung while another trains is normal and never counts.
"""

from __future__ import annotations

import time

from ray.tune import Callback
from ray.tune.experiment import Trial

#: how long every unfinished trial may stay paused with nothing running (a restart takes seconds)
STALL_GRACE_S = 120.0


class SweepStalled(RuntimeError):
    """Every unfinished trial is paused and none will be started."""


class StallWatchdog(Callback):
    def __init__(self, grace_s: float = STALL_GRACE_S, clock=time.monotonic):
        self.grace_s, self.clock = grace_s, clock
        self._stalled_since: float | None = None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        unfinished = [t for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]
        stalled = bool(unfinished) and all(t.status == Trial.PAUSED for t in unfinished)
        if not stalled:
            self._stalled_since = None
            return
        now = self.clock()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since > self.grace_s:
            paused = ", ".join(f"{t.trial_id} (step {(t.last_result or {}).get('step', '?')})" for t in unfinished)
            raise SweepStalled(
                f"sweep stalled: trials {paused} have waited paused for {self.grace_s:g} s with no trial running "
                f"or pending — the scheduler will never restart them (a bug: please report it with this sweep's "
                f"directory). The experiment state is saved: --resume continues from the rung checkpoints.")
