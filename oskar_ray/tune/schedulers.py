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
* ``sha`` (Ray's ``HyperBandScheduler`` as one bracket): every trial pauses at
  a rung until all trials of the sweep reached it; then the top
  ``ceil(n / reduction_factor)`` continue and the rest stop. The compute is
  fixed by the grid size, not by arrival order; a paused trial gives its
  resources back and later restarts from its Ray Train checkpoint at the rung
  (``train.checkpoint_every`` must divide every rung), costing one trial
  start-up per promotion.
"""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler
from ray.tune.schedulers.hyperband import _Bracket


class TrainedTrialsFinishASHA(ASHAScheduler):
    """ASHA that never stops a trial whose training is done.

    Ray's ASHA stops every trial reporting ``step >= max_t`` and may cut one at
    a rung placed exactly at ``max_t``: here that is the final training report,
    so the trial would be killed just before its downstream evaluation, wasting
    the whole run. Decisions are made only while a trial still trains.
    """

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class SynchronousHalving(HyperBandScheduler):
    """Successive halving over all ``num_trials`` trials of a sweep, one rung at a time.

    Ray's HyperBand sizes its brackets from ``max_t`` alone (150 steps at
    factor 3: a first bracket of 243 trials, rungs from step 1) and keeps
    ``ceil(bracket size / factor)`` at each rung, so a 6-trial sweep would
    never cut anyone. Here the one bracket is exactly the sweep: ``num_trials``
    trials, first rung at ``grace_period``, one halving per rung, and the
    survivors of the last rung train to the end (``stop_last_trials=False``:
    no trial is stopped at its final report, before its evaluation).
    """

    def __init__(self, *, num_trials: int, grace_period: int, reduction_factor: float, max_t: int, metric: str,
                 mode: str, time_attr: str = "step"):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self._num_trials, self._grace = num_trials, grace_period
        self._rungs = len(rung_steps(grace_period, reduction_factor, max_t))

    def _create_bracket(self, s):
        return _Bracket(time_attr=self._time_attr, max_trials=self._num_trials, init_t_attr=self._grace,
                        max_t_attr=self._max_t_attr, eta=self._eta, s=self._rungs, stop_last_trials=False)

    def on_trial_add(self, tune_controller, trial):
        # Tuner.restore re-adds the sweep's finished trials: in the bracket they would hold every rung open
        # forever (no results). The restored bracket ranks the unfinished ones, still halving from num_trials.
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        super().on_trial_add(tune_controller, trial)

    def _cur_band_filled(self) -> bool:
        return bool(self._hyperbands[self._state["band_idx"]])  # one bracket per band

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # reports between probes lack the metric; the bracket ranks on the last report that has it
        if self._metric not in result or result.get(self._time_attr, 0) >= self._max_t_attr:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _process_bracket(self, tune_controller, bracket) -> str:
        # Ray halves once per report. A restarted trial re-reports the last value it logged, which may lie past
        # the next rung as well (it trained on while being paused): after one halving the winner would wait at
        # that rung, paused, with no trial left to report — a sweep that never ends. Halve on while every live
        # trial is past the rung; the reporting trial keeps a STOP/CONTINUE it got (a cut trial left the bracket).
        action = super()._process_bracket(tune_controller, bracket)
        while bracket._halves > 0 and bracket.cur_iter_done():
            again = super()._process_bracket(tune_controller, bracket)
            action = again if action == TrialScheduler.PAUSE else action
        return action


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
