"""Sweep schedulers without Ray: synchronous successive halving, the ASHA variant, the stall watchdog."""

from __future__ import annotations

from pathlib import Path

import pytest

from oskar_ray.config import load_config
from oskar_ray.tune.spec import spec_from_dict

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


def test_asha_never_stops_a_trial_that_finished_training():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from oskar_ray.tune.schedulers import make_scheduler

    spec = spec_from_dict({"name": "a", "base": str(SMOKE), "space": {"train.lr": [1e-3]},
                           "scheduler": {"metric": "probe/mean", "grace_period": 10, "reduction_factor": 2}})
    cfg = load_config(SMOKE, ["train.steps=40"])
    sched = make_scheduler(spec, cfg)
    good, bad, late = (SimpleNamespace(trial_id=n) for n in ("good", "bad", "late"))
    for trial in (good, bad, late):
        sched.on_trial_add(None, trial)
    assert sched.on_trial_result(None, good, {"step": 10, "probe/mean": 0.9}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, bad, {"step": 10, "probe/mean": 0.1}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, late, {"step": 5, "loss": 1.0}) == TrialScheduler.CONTINUE  # no signal yet
    # plain Ray ASHA would stop at step >= max_t, killing the trial before its evaluation
    assert sched.on_trial_result(None, good, {"step": 40, "probe/mean": 0.0}) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="grace_period"):
        make_scheduler(spec, load_config(SMOKE, ["train.steps=10"]))
    # a trial it stops is tagged as ASHA's (the stop itself runs end to end in test_tune_sweep.py, under SHA)
    from oskar_ray.tune.results import SweepCallback

    assert SweepCallback("", "", "", "probe/mean", scheduler="asha").stop_reason == "asha"


class _Trial:
    """What the schedulers read of a Tune trial; Tune itself sets ``status`` from the returned decision."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.last_result = trial_id, "RUNNING", {}

    def set_status(self, status: str) -> None:
        self.status = status


class _Controller:
    """The one TuneController method SynchronousHalving calls: ``stop_trial``, which (as Tune's) tells the
    scheduler the trial is gone — ``on_trial_remove`` if it was paused or pending, else ``on_trial_complete``."""

    def __init__(self):
        self.stopped: list[str] = []
        self.scheduler = None

    def stop_trial(self, trial):
        if trial.status in ("TERMINATED", "ERROR"):
            return
        self.stopped.append(trial.trial_id)
        if trial.status in ("PENDING", "PAUSED"):
            self.scheduler.on_trial_remove(self, trial)
        else:
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = "TERMINATED"


def _sha(num_trials: int, steps: int, grace: int, factor: int, **scheduler):
    """A SynchronousHalving as the sweep builds it, its fake controller and ``num_trials`` running trials."""
    from oskar_ray.tune.schedulers import make_scheduler

    spec = spec_from_dict({"name": "s", "base": str(SMOKE), "space": {"train.lr": [1e-3]}, "scheduler": {
        "kind": "sha", "metric": "probe/mean", "grace_period": grace, "reduction_factor": factor, **scheduler}})
    cfg = load_config(SMOKE, [f"train.steps={steps}", f"train.checkpoint_every={grace}"])
    sched = make_scheduler(spec, cfg, num_trials=num_trials)
    ctrl, trials = _Controller(), [_Trial(f"t{i}") for i in range(num_trials)]
    ctrl.scheduler = sched
    for trial in trials:
        sched.on_trial_add(ctrl, trial)
    return sched, ctrl, trials


def _restored(sched):
    """The scheduler as a resumed driver gets it (unpickled from tuner.pkl) and a fresh controller for it."""
    import pickle

    restored, ctrl = pickle.loads(pickle.dumps(sched)), _Controller()
    ctrl.scheduler = restored
    return restored, ctrl


def _report(sched, ctrl, trial, step: int, value: float, metric: str = "probe/mean") -> str:
    """One report; the trial's status follows the decision, as Tune sets it."""
    decision = sched.on_trial_result(ctrl, trial, {"step": step, metric: value})
    trial.status = {"PAUSE": "PAUSED", "STOP": "TERMINATED"}.get(decision, trial.status)
    return decision


def test_synchronous_halving_pauses_until_every_trial_reached_the_rung():
    from ray.tune.schedulers import TrialScheduler

    from oskar_ray.tune.schedulers import make_scheduler

    spec = spec_from_dict({"name": "s", "base": str(SMOKE), "space": {"train.lr": [1e-3]}, "scheduler": {
        "kind": "sha", "metric": "probe/mean", "grace_period": 10, "reduction_factor": 3}})
    sched = make_scheduler(spec, load_config(SMOKE, ["train.steps=150", "train.checkpoint_every=10"]), num_trials=6)
    ctrl, trials = _Controller(), [_Trial(f"t{i}") for i in range(6)]
    ctrl.scheduler = sched
    for trial in trials:
        sched.on_trial_add(ctrl, trial)
    finished = _Trial("restored")  # a trial Tuner.restore re-adds after it ended: it must not hold the rung
    finished.status = "TERMINATED"
    sched.on_trial_add(ctrl, finished)
    scores = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7]
    assert sched.on_trial_result(ctrl, trials[0], {"step": 5, "loss": 1.0}) == TrialScheduler.CONTINUE  # no signal
    for trial, score in zip(trials[:5], scores, strict=False):  # the first five wait at step 10 for the sixth
        assert sched.on_trial_result(ctrl, trial, {"step": 10, "probe/mean": score}) == TrialScheduler.PAUSE
        trial.status = "PAUSED"
    # the last arrival decides the rung for all six: the top ceil(6/3) = 2 go on, whatever the arrival order
    assert sched.on_trial_result(ctrl, trials[5], {"step": 10, "probe/mean": 0.7}) == TrialScheduler.CONTINUE
    assert sorted(ctrl.stopped) == ["t0", "t1", "t2", "t4"]
    assert sched.choose_trial_to_run(ctrl) is trials[3]  # the paused winner resumes
    trials[3].status = "RUNNING"
    assert sched.on_trial_result(ctrl, trials[5], {"step": 20, "probe/mean": 0.8}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctrl, trials[5], {"step": 30, "probe/mean": 0.8}) == TrialScheduler.PAUSE
    trials[5].status = "PAUSED"
    assert sched.on_trial_result(ctrl, trials[3], {"step": 30, "probe/mean": 0.85}) == TrialScheduler.CONTINUE
    assert ctrl.stopped[-1] == "t5"  # rung 30 keeps ceil(2/3) = 1
    for step in (90, 100, 150):  # alone after the last rung: never paused, never stopped before its evaluation
        assert sched.on_trial_result(ctrl, trials[3], {"step": step, "probe/mean": 0.0}) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("first", ["frozen", "good"])
def test_synchronous_halving_handles_a_report_past_several_rungs(first):
    """A restarted trial re-reports the last value it logged, which may lie past the next rung too (it trained
    on while being paused). Ray halves one rung per report: it would leave the winner paused at rung 8 with no
    trial left to report — a sweep that never ends (seen in CI after a resumed driver), whichever restarts first."""
    from ray.tune.schedulers import TrialScheduler

    from oskar_ray.tune.schedulers import make_scheduler

    spec = spec_from_dict({"name": "s", "base": str(SMOKE), "space": {"train.lr": [1e-3]}, "scheduler": {
        "kind": "sha", "metric": "loss", "mode": "min", "grace_period": 4, "reduction_factor": 2}})
    sched = make_scheduler(spec, load_config(SMOKE, ["train.steps=12", "train.checkpoint_every=4"]), num_trials=2)
    ctrl, (good, frozen) = _Controller(), (_Trial("good"), _Trial("frozen"))
    ctrl.scheduler = sched
    for trial in (good, frozen):
        sched.on_trial_add(ctrl, trial)
    if first == "frozen":
        assert sched.on_trial_result(ctrl, frozen, {"step": 4, "loss": 1.0}) == TrialScheduler.PAUSE
        frozen.status = "PAUSED"
        # rung 4 (frozen cut) and rung 8 (the winner alone) are both decided by this one report
        assert sched.on_trial_result(ctrl, good, {"step": 8, "loss": 0.6}) == TrialScheduler.CONTINUE
        assert ctrl.stopped == ["frozen"]
    else:
        assert sched.on_trial_result(ctrl, good, {"step": 8, "loss": 0.6}) == TrialScheduler.PAUSE  # waits at 4
        good.status = "PAUSED"
        assert sched.on_trial_result(ctrl, frozen, {"step": 4, "loss": 1.0}) == TrialScheduler.STOP
        assert sched.choose_trial_to_run(ctrl) is good  # past rung 8 alone: it must be let go on
        good.status = "RUNNING"
    assert sched.on_trial_result(ctrl, good, {"step": 12, "loss": 0.5}) == TrialScheduler.CONTINUE


def test_synchronous_halving_decides_a_rung_an_errored_or_removed_trial_held_open():
    """A trial that errors (or is stopped while paused) leaves the bracket: the rung it held open is decided at
    once — else the trials paused there wait for a report that never comes."""
    sched, ctrl, t = _sha(4, steps=40, grace=10, factor=2)  # rungs 10, 20; keep 2, then 1
    for trial, score in zip(t[:3], [0.1, 0.9, 0.5], strict=True):
        assert _report(sched, ctrl, trial, 10, score) == "PAUSE"
    assert sched.choose_trial_to_run(ctrl) is None  # all wait at rung 10 for t3
    sched.on_trial_error(ctrl, t[3])
    t[3].status = "ERROR"
    assert ctrl.stopped == ["t0"]  # rung 10 among the three left: t1 and t2 go on
    assert sched.choose_trial_to_run(ctrl) is t[1]
    t[1].status = "RUNNING"
    assert _report(sched, ctrl, t[1], 20, 0.9) == "PAUSE"  # waits at rung 20 for t2, itself paused and promoted
    assert sched.choose_trial_to_run(ctrl) is t[2]
    ctrl.stop_trial(t[2])  # removed while paused (e.g. by the user)
    assert sched.choose_trial_to_run(ctrl) is t[1]  # alone at rung 20: promoted, not left paused
    t[1].status = "RUNNING"
    assert _report(sched, ctrl, t[1], 30, 0.9) == "CONTINUE"
    assert "past the last rung: 1 live trial" in sched.debug_string()


def test_synchronous_halving_never_pauses_or_stops_a_trial_at_or_past_max_t():
    """The final report precedes the trial's evaluation: pausing or stopping it there would waste the run."""
    sched, ctrl, (a, b, c) = _sha(3, steps=12, grace=4, factor=2)  # rungs 4, 8
    assert _report(sched, ctrl, a, 4, 0.9) == "PAUSE"
    # b logged no signal before its end (the worst value, past every rung, with rung 4 open): it still finishes
    assert _report(sched, ctrl, b, 12, 0.0) == "CONTINUE"
    assert _report(sched, ctrl, b, 13, 0.0) == "CONTINUE"
    sched.on_trial_complete(ctrl, b, {})
    b.status = "TERMINATED"
    assert _report(sched, ctrl, c, 4, 0.1) == "CONTINUE"  # keep ceil(3/2) = 2 of the two left: both go on
    assert ctrl.stopped == [] and sched.choose_trial_to_run(ctrl) is a
    a.status = "RUNNING"
    assert _report(sched, ctrl, a, 8, 0.9) == "PAUSE"
    assert _report(sched, ctrl, c, 8, 0.1) == "STOP"  # keep ceil(2/2) = 1
    assert sched.choose_trial_to_run(ctrl) is a
    a.status = "RUNNING"
    assert [_report(sched, ctrl, a, step, 0.0) for step in (10, 12)] == ["CONTINUE", "CONTINUE"]


def test_synchronous_halving_under_mode_min_keeps_the_lowest_and_cuts_a_nan():
    sched, ctrl, t = _sha(4, steps=12, grace=4, factor=2, metric="loss", mode="min")
    for trial, loss in ((t[1], 0.1), (t[3], 0.2), (t[0], float("nan"))):
        assert _report(sched, ctrl, trial, 4, loss, "loss") == "PAUSE"
    assert _report(sched, ctrl, t[2], 4, 0.3, "loss") == "STOP"
    assert ctrl.stopped == ["t0"]
    assert sched.choose_trial_to_run(ctrl) is t[1] and sched.metric == "loss"


def test_synchronous_halving_restores_an_empty_bracket_and_rebuilds_it_from_the_unfinished_trials():
    """Tune pickles the scheduler with the tuner (tuner.pkl); Tuner.restore re-adds every trial, the finished
    ones with their final status. No stale bookkeeping may survive the pickle: it would wait for trials gone."""
    sched, ctrl, t = _sha(4, steps=40, grace=10, factor=2)  # rungs 10, 20; keep 2, then 1
    for trial, score in zip(t, [0.1, 0.9, 0.5, 0.3], strict=True):
        _report(sched, ctrl, trial, 10, score)
    assert ctrl.stopped == ["t0"] and t[3].status == "TERMINATED"
    sched.choose_trial_to_run(ctrl).status = "RUNNING"
    assert _report(sched, ctrl, t[1], 20, 0.9) == "PAUSE"
    # the driver dies here; the restored driver unpickles the scheduler and re-adds the trials
    restored, ctrl = _restored(sched)
    assert restored.choose_trial_to_run(ctrl) is None
    t[0].status, t[1].status, t[2].status = "ERROR", "PENDING", "PENDING"  # t3 stays TERMINATED (cut)
    for trial in t:
        restored.on_trial_add(ctrl, trial)
    assert restored.choose_trial_to_run(ctrl) is t[1]
    t[1].status = "RUNNING"
    assert _report(restored, ctrl, t[1], 20, 0.9) == "PAUSE"  # re-reported past rungs 10 and 20; t2 not at 10
    assert restored.choose_trial_to_run(ctrl) is t[2]
    t[2].status = "RUNNING"
    assert _report(restored, ctrl, t[2], 10, 0.5) == "CONTINUE"  # rung 10 keeps 2 (from 4 trials): both
    assert restored.choose_trial_to_run(ctrl) is None  # t1 waits at rung 20
    assert _report(restored, ctrl, t[2], 20, 0.6) == "STOP"
    assert restored.choose_trial_to_run(ctrl) is t[1] and ctrl.stopped == []


def test_synchronous_halving_files_a_restored_trial_waiting_at_a_rung_as_paused():
    """``Tuner.restore`` re-adds unfinished trials as pending with the last result Tune's experiment state kept,
    and Tune starts every pending trial a slot frees for. A trial that was paused at a rung is ranked there again
    from that result and filed paused (Tune reads the status after ``on_trial_add``), so it is not started only to
    re-report its value and pause again; one whose last result holds no value stays pending and runs."""
    sched, ctrl, t = _sha(4, steps=40, grace=10, factor=2)  # rungs 10, 20; keep 2, then 1
    restored, ctrl = _restored(sched)
    t[0].status, t[3].status = "ERROR", "TERMINATED"
    t[1].status, t[1].last_result = "PENDING", {"step": 20, "probe/mean": 0.9}  # was paused at rung 20
    t[2].status, t[2].last_result = "PENDING", {"step": 15, "loss": 1.0}  # was training between probes
    for trial in t:
        restored.on_trial_add(ctrl, trial)
    assert (t[1].status, t[2].status) == ("PAUSED", "PENDING")
    assert restored.choose_trial_to_run(ctrl) is t[2]
    t[2].status = "RUNNING"
    assert _report(restored, ctrl, t[2], 10, 0.5) == "CONTINUE"  # rung 10 keeps 2: both; t1 waits at 20
    assert restored.choose_trial_to_run(ctrl) is None
    assert _report(restored, ctrl, t[2], 20, 0.6) == "STOP"
    assert restored.choose_trial_to_run(ctrl) is t[1] and ctrl.stopped == []  # promoted: restarts now
    t[1].status = "RUNNING"  # restarted, it re-reports its rung value (report_last_signal): already decided
    assert _report(restored, ctrl, t[1], 20, 0.9) == "CONTINUE"


def test_synchronous_halving_decides_a_rung_every_restored_trial_waits_at():
    """Restored trials may all have been ranked at the same undecided rung (the driver died after the last
    report but before the decision reached the experiment state): nobody is left to report, so the rung is
    decided when Tune asks for a trial to run — the loser stopped where it waits, the winner run."""
    sched, _, t = _sha(2, steps=40, grace=10, factor=2)  # rungs 10, 20; keep 1, then 1
    restored, ctrl = _restored(sched)
    for trial, score in zip(t, [0.3, 0.8], strict=True):
        trial.status, trial.last_result = "PENDING", {"step": 10, "probe/mean": score}
        restored.on_trial_add(ctrl, trial)
    assert [trial.status for trial in t] == ["PAUSED", "PAUSED"]
    assert restored.choose_trial_to_run(ctrl) is t[1] and ctrl.stopped == ["t0"]
    assert t[0].status == "TERMINATED"


def test_synchronous_halving_needs_a_checkpoint_at_every_rung():
    from oskar_ray.tune.schedulers import make_scheduler

    spec = spec_from_dict({"name": "s", "base": str(SMOKE), "space": {"train.lr": [1e-3]},
                           "scheduler": {"kind": "sha", "grace_period": 10, "reduction_factor": 3}})
    with pytest.raises(ValueError, match=r"steps \[10\].*checkpoint_every \(15\)"):
        make_scheduler(spec, load_config(SMOKE, ["train.steps=150", "train.checkpoint_every=15"]), num_trials=6)


def test_a_sweep_whose_trials_all_wait_paused_errors_instead_of_hanging():
    from oskar_ray.tune.watchdog import StallWatchdog, SweepStalled

    now = [0.0]
    dog = StallWatchdog(grace_s=120, clock=lambda: now[0])
    waiting, training, done = _Trial("waiting"), _Trial("training"), _Trial("done")
    waiting.status, done.status = "PAUSED", "TERMINATED"
    waiting.last_result = {"step": 8}
    for t in (0, 100, 300):  # paused at a rung while another trial trains: normal, however long
        now[0] = t
        dog.on_step_end(1, [waiting, training, done])
    training.status = "PENDING"  # about to start (e.g. waiting for resources): still progress
    now[0] = 500
    dog.on_step_end(2, [waiting, training, done])
    training.status = "TERMINATED"  # now nothing runs and nothing will: the clock starts
    for t in (600, 700):
        now[0] = t
        dog.on_step_end(3, [waiting, training, done])
    now[0] = 721
    with pytest.raises(SweepStalled, match=r"waiting \(step 8\).*--resume"):
        dog.on_step_end(4, [waiting, training, done])
    dog_after_restart = StallWatchdog(grace_s=120, clock=lambda: now[0])
    waiting.status = "RUNNING"
    dog_after_restart.on_step_end(5, [waiting, training, done])  # nothing paused: never raises
    now[0] = 10_000
    dog_after_restart.on_step_end(6, [waiting, training, done])
