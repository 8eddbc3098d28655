"""Trial schedulers of a sweep: ASHA or synchronous successive halving on training steps, or FIFO.

The time attribute is the ``step`` every worker report carries (reports come
every ``train.log_every`` / ``eval.online_probe_every`` / checkpoint step), so
``grace_period`` is in training steps and rungs sit at
``grace_period * reduction_factor**k`` steps below ``train.steps``.

* ``asha`` (Ray's ``ASHAScheduler``): at each rung a trial continues only if
  its ``scheduler.metric`` is in the top ``1/reduction_factor`` of the trials
  that reached the rung *before it*. Nothing waits, but the first trial at a
  rung always continues: with a handful of trials the compute saved depends on
  the order they arrive in (6 trials: 0.31 and 0.66 of the grid in two runs).
* ``sha`` (``SynchronousHalving``, one bracket over the whole sweep): every
  trial pauses at a rung until all trials of the sweep reached it; then the top
  ``ceil(n / reduction_factor)`` continue and the rest stop. The compute is
  fixed by the grid size, not by arrival order; a paused trial gives its
  resources back and later restarts from its Ray Train checkpoint at the rung
  (``train.checkpoint_every`` must divide every rung), costing one trial
  start-up per promotion.

Both are written against Ray Tune's scheduler interface only: the hooks of the
public ``TrialScheduler``, ``tune_controller.stop_trial`` and a trial's
``status`` / ``trial_id`` (``TuneController`` and ``Trial`` are Tune's
developer API, which its own schedulers use); nothing private — Ray's HyperBand
bracket changes between minor releases.
"""

from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


class TrainedTrialsFinishASHA(ASHAScheduler):
    """ASHA that never stops a trial whose training is done.

    Ray's ASHA stops every trial reporting ``step >= max_t`` and may cut one at
    a rung placed exactly at ``max_t``: here that is the final training report,
    so the trial would be killed just before its downstream evaluation, wasting
    the whole run. Decisions are made only while a trial still trains.
    """

    def __init__(self, *, time_attr: str = "step", max_t: int = 100, **kwargs):
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self._trained_attr, self._trained_at = time_attr, max_t  # ours: Ray's own attributes are private

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._trained_attr, 0) >= self._trained_at:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SynchronousHalving(FIFOScheduler):
    """Successive halving over all ``num_trials`` trials of a sweep, one rung at a time.

    Ray's HyperBand sizes its brackets from ``max_t`` alone (150 steps at
    factor 3: a first bracket of 243 trials, rungs from step 1) and keeps
    ``ceil(bracket size / factor)`` at each rung, so a 6-trial sweep would
    never cut anyone. Here the one bracket is exactly the sweep: ``num_trials``
    trials, rungs at :func:`rung_steps`; at each rung the best ``n = ceil(n / factor)``
    of the live trials go on, ``n`` starting from ``num_trials`` (6 trials, factor 3: 2, then 1).

    A trial reporting the metric at or past the lowest undecided rung is ranked
    there on that report (its first at or past the rung) and waits, paused
    (``PAUSE``), until every live trial has a value there; the last arrival decides the rung:
    it gets ``CONTINUE`` or ``STOP``, cut paused trials are stopped through the
    controller and promoted ones are restarted by :meth:`choose_trial_to_run`.
    Reports without the metric, and any report at ``step >= max_t`` (the final
    one, before the trial's evaluation), continue. The survivors of the last rung
    train to the end. A trial that completes, errors or is removed leaves the
    bracket, which may decide the rung it held open.

    Nothing of the bookkeeping is pickled: Tune stores the scheduler with the
    tuner and ``Tuner.restore`` rebuilds the bracket from the unfinished trials it
    re-adds (finished ones, re-added with their final status, are ignored): each is
    ranked again from the last result Tune's experiment state kept for it, and one
    that waits at an undecided rung is filed paused again (not started just to report
    its value and pause); a trial whose kept result holds no value (it was training
    between probes) re-reports its last value when it restarts (``trial.report_last_signal``).

    Limits (none reached by the sweeps here): a rung is decided once every trial
    *added so far* waits at it, so Tune must add all trials up front (it does below
    its pending-trial cap, 200 by default); and a trial Tune retries after an error
    (``max_failures > 0``; sweeps run with 0) rejoins as a new entrant, at whatever
    rung it re-reports.
    """

    def __init__(self, *, num_trials: int, grace_period: int, reduction_factor: float, max_t: int, metric: str,
                 mode: str, time_attr: str = "step"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        super().__init__()
        self._rank_metric, self._mode, self._time_attr, self._max_t = metric, mode, time_attr, max_t
        self._rungs = rung_steps(grace_period, reduction_factor, max_t)
        self._keep, n = [], max(1, num_trials)
        for _ in self._rungs:
            n = math.ceil(n / reduction_factor)
            self._keep.append(n)
        self._reset()

    def _reset(self) -> None:
        self._live: dict[str, Trial] = {}  # trial id -> trial, in add order
        self._values: dict[str, dict[int, float]] = {}  # trial id -> rung index -> value ranked there
        self._decided = 0  # rungs[:decided] are decided
        self._cut: set[str] = set()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_live={}, _values={}, _decided=0, _cut=set())
        return state

    # -- Tune's interface ------------------------------------------------------------------------------------

    @property
    def metric(self):
        return self._rank_metric

    @property
    def supports_buffered_results(self) -> bool:
        return False  # one decision per report: a buffered batch could pass a rung unseen

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return not metric and not mode  # fixed at construction

    def on_trial_add(self, tune_controller, trial):
        # Tuner.restore re-adds the sweep's finished trials: they would hold every rung open forever (no results)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        self._live.setdefault(trial.trial_id, trial)
        self._values.setdefault(trial.trial_id, {})
        self._cut.discard(trial.trial_id)
        # a restored trial: ranked again from its last result before the interrupt. One waiting at a rung is filed
        # paused, as it was: Tune reads the status after this call, and starts a pending trial as soon as a trial
        # slot is free whatever choose_trial_to_run says — it would start only to re-report its value and pause
        if self._rank(trial.trial_id, trial.last_result or {}) and trial.status == Trial.PENDING \
                and self._waiting(trial.trial_id):
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        step = result.get(self._time_attr)
        if step is None or step >= self._max_t:
            return TrialScheduler.CONTINUE  # the final report comes before the trial's evaluation
        if trial.trial_id in self._cut:
            return TrialScheduler.STOP
        if not self._rank(trial.trial_id, result):
            return TrialScheduler.CONTINUE  # reports between probes lack the metric
        # A restarted trial re-reports the last value it logged, which may lie past several rungs (it trained on
        # while being paused): decide every rung all live trials passed, or the winner could wait paused at the
        # next one with no trial left to report — a sweep that never ends.
        self._decide_rungs(tune_controller, reporting=trial)
        if trial.trial_id in self._cut:
            return TrialScheduler.STOP
        return TrialScheduler.PAUSE if self._waiting(trial.trial_id) else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict):
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        """The trial leaves the bracket; a rung only it held open is decided now."""
        if self._live.pop(trial.trial_id, None) is not None:
            self._values.pop(trial.trial_id, None)
            self._decide_rungs(tune_controller, reporting=None)

    def choose_trial_to_run(self, tune_controller):
        """Pending trials first (add order), then paused trials not waiting at an undecided rung (promoted)."""
        # trials restored paused at a rung may be all the bracket has left: nobody would report to decide it
        self._decide_rungs(tune_controller, reporting=None)
        live = list(self._live.values())
        for trial in live:
            if trial.status == Trial.PENDING:
                return trial
        for trial in live:
            if trial.status == Trial.PAUSED and not self._waiting(trial.trial_id):
                return trial
        return None

    def debug_string(self) -> str:
        if self._decided < len(self._rungs):
            at = sum(self._waiting(t) for t in self._live)
            where = f"rung {self._rungs[self._decided]}: {at}/{len(self._live)} live trials there"
        else:
            where = f"past the last rung: {len(self._live)} live trials train to the end"
        return (f"Using synchronous successive halving (rungs {self._rungs}, keep {self._keep}): {where}; "
                f"{len(self._cut)} stopped")

    # -- the bracket -----------------------------------------------------------------------------------------

    def _rank(self, trial_id: str, result: dict) -> bool:
        """Record ``result``'s value at every undecided rung its step reached (a trial is ranked at a rung by its
        first report there). False when the result holds no value to rank or the trial left the bracket."""
        step, value = result.get(self._time_attr), result.get(self._rank_metric)
        if step is None or step >= self._max_t or value is None or trial_id not in self._live:
            return False
        values = self._values[trial_id]
        for k in range(self._decided, len(self._rungs)):
            if self._rungs[k] <= step:
                values.setdefault(k, float(value))
        return True

    def _waiting(self, trial_id: str) -> bool:
        """Ranked at the lowest undecided rung: it waits there (paused) until the rung is decided."""
        return self._decided < len(self._rungs) and self._decided in self._values.get(trial_id, {})

    def _decide_rungs(self, tune_controller, reporting: Trial | None) -> None:
        while self._decided < len(self._rungs) and self._live and all(map(self._waiting, self._live)):
            k = self._decided
            sign = 1.0 if self._mode == "max" else -1.0
            ranked = sorted(self._live, key=lambda t: _worst_if_nan(sign * self._values[t][k]), reverse=True)
            self._decided += 1
            for trial_id in ranked[self._keep[k]:]:
                trial = self._live.pop(trial_id)
                self._values.pop(trial_id)
                self._cut.add(trial_id)
                if trial is not reporting and trial.status not in (Trial.TERMINATED, Trial.ERROR):
                    # paused at the rung (or still saving for its pause): Tune's canonical stop, as HyperBand's;
                    # it calls back on_trial_remove / on_trial_complete, a no-op now the trial left the bracket
                    tune_controller.stop_trial(trial)


def _worst_if_nan(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def rung_steps(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The steps where trials are compared: ``grace * factor**k`` below ``max_t``."""
    out, step = [], float(grace_period)
    while step < max_t:
        out.append(int(step))
        step *= reduction_factor
    return out


def make_scheduler(spec, cfg, num_trials: int = 0) -> TrialScheduler:
    s = spec.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    if s.grace_period >= cfg.train.steps:
        raise ValueError(f"sweep.scheduler.grace_period ({s.grace_period}) must be below train.steps "
                         f"({cfg.train.steps}): {s.kind} could never stop a trial")
    if s.kind == "sha":
        _check_rung_checkpoints(s, cfg)
        return SynchronousHalving(num_trials=max(1, num_trials), grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor, max_t=cfg.train.steps, metric=s.metric,
                                  mode=s.mode)
    return TrainedTrialsFinishASHA(time_attr="step", metric=s.metric, mode=s.mode, max_t=cfg.train.steps,
                                   grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _check_rung_checkpoints(s, cfg) -> None:
    """A paused trial restarts from its last checkpoint: one at every rung, or it retrains steps."""
    every = cfg.train.checkpoint_every
    off = [r for r in rung_steps(s.grace_period, s.reduction_factor, cfg.train.steps) if every <= 0 or r % every]
    if off:
        raise ValueError(f"sweep.scheduler.kind=sha pauses trials at steps {off}: train.checkpoint_every "
                         f"({every}) must divide every rung step so a resumed trial continues from there")
