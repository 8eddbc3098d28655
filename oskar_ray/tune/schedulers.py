"""Trial schedulers of a sweep: ASHA on training steps (never cutting a trained trial), or FIFO.

ASHA's time attribute is the ``step`` every worker report carries (reports come
every ``train.log_every`` / ``eval.online_probe_every`` / checkpoint step), so
``grace_period`` is in training steps and rungs sit at
``grace_period * reduction_factor**k`` steps below ``train.steps``. At each
rung a trial continues only if its ``scheduler.metric`` is in the top
``1/reduction_factor`` of the trials that reached the rung before it.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler


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


def make_scheduler(spec, cfg) -> TrialScheduler:
    s = spec.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    if s.grace_period >= cfg.train.steps:
        raise ValueError(f"sweep.scheduler.grace_period ({s.grace_period}) must be below train.steps "
                         f"({cfg.train.steps}): ASHA could never stop a trial")
    return TrainedTrialsFinishASHA(time_attr="step", metric=s.metric, mode=s.mode, max_t=cfg.train.steps,
                                   grace_period=s.grace_period, reduction_factor=s.reduction_factor)
