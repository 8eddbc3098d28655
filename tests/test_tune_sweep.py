"""Ray Tune sweeps end to end on the local Ray: a smoke sweep (ASHA) from start to report, and synchronous
halving (pause, cut, resume from the rung checkpoint, all through a driver killed while a trial is paused).

A driver killed mid-sweep takes one path whatever the scheduler (``--resume``: Tune restores the experiment,
each unfinished trial restarts in its own child run from its last Ray Train checkpoint, the stopped trials still
lacking ``eval/*`` are evaluated, the parent run is finished): the synchronous-halving sweep asserts it, its
paused trial continuing from the rung checkpoint and its running one (killed before its first checkpoint)
restarting and being cut.

A trial the scheduler stops takes the same path under either scheduler (Tune stops it; ``SweepCallback`` ends
its run and the stopped-trial evaluator scores it at its last checkpoint): the synchronous-halving sweep
asserts it end to end; ASHA's own decisions (cut at the rung, never at the last step) are asserted without
Ray in ``test_schedulers.py``.

Slow (each sweep starts Ray Train trials, ~1 min on 2 cores); they run in CI. Tiny
model, a handful of steps, the session's 130-clip synthetic set.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
#: a trial as short as the machinery allows: 12 steps of 4 clips, signal every 4 steps, one-epoch probes
TRIAL = ["train.steps=12", "train.batch_size=4", "train.warmup_steps=2", "train.log_every=4",
         "train.checkpoint_every=4", "eval.rankme_every=4", "eval.online_probe_every=4", "eval.batch_size=16",
         "eval.online_probe_views=[fusion]", "eval.tasks=[action]", "eval.probe_epochs=1", "eval.finetune_epochs=0",
         "data.shuffle_buffer=8"]


def _sweep_file(tmp_path: Path, synth_dir: Path, space: dict, scheduler: dict, name: str = "t",
                concurrent: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "base": str(REPO / "experiments/configs/smoke.yaml"),
        "overrides": [*TRIAL, f"data.path={synth_dir}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
        "space": space, "scheduler": scheduler, "select": {"metric": "eval/action/fusion/linear/top1"},
        "max_concurrent": concurrent, "storage_path": str(tmp_path / "sweeps")}))
    return path


def _children(tmp_path: Path, outcome_or_parent) -> tuple[MlflowClient, list]:
    parent = getattr(outcome_or_parent, "parent_run_id", outcome_or_parent)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return client, runs


def _parent_csv(client, parent_run_id: str, name: str):
    import pandas as pd

    return pd.read_csv(client.download_artifacts(parent_run_id, name))


def _driver(sweep: Path, *args: str) -> list[str]:
    code = "import sys; from oskar_ray.tune.cli import sweep_main; sys.exit(sweep_main(sys.argv[1], sys.argv[2:]))"
    return [sys.executable, "-c", code, str(sweep), *args]


def test_smoke_sweep_end_to_end(ray_local, synth_dir, tmp_path):
    """2 trials under ASHA, one driver from start to report: 1 parent + 2 nested runs with pretraining and
    eval metrics, each trial evaluated exactly once, the sweep's tables and the report on the parent."""
    sweep = _sweep_file(tmp_path, synth_dir, {"budget.input_tokens": [32, 48]},
                        {"kind": "asha", "metric": "probe/fusion/knn_top1", "grace_period": 4}, name="r")
    done = _run_driver(sweep, tmp_path, timeout=600)
    assert "mlflow ui --backend-store-uri sqlite:///" in done.stdout
    parent = json.loads(next((tmp_path / "sweeps").glob("r-*/oskar_sweep.json")).read_text())["parent_run_id"]
    client, children = _children(tmp_path, parent)
    assert len(children) == 2 and len({c.data.tags["oskar.trial_id"] for c in children}) == 2  # no duplicates
    for child in children:
        _assert_trial_run(client, child)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert steps == [4, 8, 12]  # trained straight through, logged once per step
    _assert_parent_run(client, parent, children)


def test_synchronous_halving_pauses_cuts_at_the_rung_and_resumes_after_the_driver_died(
        ray_local, synth_dir, tmp_path):
    """One trial slot (conftest), grid order: the learning trial reaches the rung first and pauses; the driver
    dies while it waits paused and the frozen trial (lr ~ 0) has just started. ``--resume`` must rebuild the
    rung (the paused trial ranked there again from the last result Tune kept and left paused, not restarted),
    cut the frozen trial there — not let both train to the end — and restart the paused trial from its rung
    checkpoint. (One sweep asserts pause, cut, resume-from-rung and the driver's resume: each sweep costs four
    trial starts on 2 cores.)"""
    sweep = _sweep_file(tmp_path, synth_dir, {"train.lr": [2e-3, 1e-12]},
                        {"kind": "sha", "metric": "loss", "mode": "min", "grace_period": 4, "reduction_factor": 2},
                        name="r")
    spec = yaml.safe_load(sweep.read_text())
    spec.update(order="grid", select={"metric": "eval/health/fusion/rankme"})
    spec["overrides"].append("eval.tasks=[health]")  # evaluation is not under test here: the cheapest task
    sweep.write_text(yaml.safe_dump(spec))
    parent, _ = _kill_driver_once(sweep, tmp_path, _wait_for_frozen_trial_while_the_other_is_paused)
    # hung (timed out) when the resumed scheduler did not rank the paused trial at its rung again (then done by
    # report_last_signal on its restart; now from Tune's kept last result, test_schedulers.py); and, when the
    # paused trial had logged a step past the rung before the kill, without SynchronousHalving halving on past
    # several rungs in one report
    resumed = _run_driver(sweep, tmp_path, "--resume", "--no-report", timeout=420)
    assert "resuming sweep r" in resumed.stdout
    printed = (tmp_path / "driver.log").read_text() + resumed.stdout
    client, children = _children(tmp_path, parent)
    assert len(children) == 2  # the resumed trials kept their child runs
    sweep_run = client.get_run(parent)  # the resumed driver finished the parent run and chose the best trial
    assert sweep_run.info.status == "FINISHED" and sweep_run.data.tags["oskar.best_run_id"] in {
        c.info.run_id for c in children}
    assert "selected_trial.json" in {a.path for a in client.list_artifacts(parent)}
    runs = {c.data.params["train.lr"]: c for c in children}
    good, frozen = runs["0.002"], runs["1e-12"]
    assert f"[{good.data.tags['oskar.trial_id']}] paused at step 4" in printed
    # restored paused, the good trial starts once in the resumed driver: when promoted (not first to re-report)
    assert resumed.stdout.count(f"[{good.data.tags['oskar.trial_id']}] started:") == 1, resumed.stdout[-3000:]
    assert good.info.status == "FINISHED" and good.data.tags["oskar.trial_status"] == "completed"
    assert "eval/health/fusion/rankme" in good.data.metrics and good.data.tags["oskar.evaluated_at_step"] == "12"
    assert frozen.info.status == "FINISHED" and frozen.data.tags["oskar.trial_status"] == "early_stopped"
    assert (frozen.data.tags["oskar.stop_reason"], frozen.data.tags["oskar.stopped_at_step"]) == (
        "successive_halving", "4")
    assert frozen.data.metrics["steps_trained"] == 4
    assert frozen.data.tags["oskar.evaluated_at_step"] == "4"  # evaluated once, before or after the interrupt
    assert f"[{frozen.data.tags['oskar.trial_id']}] evaluated at step 4" in printed
    assert len(client.get_metric_history(frozen.info.run_id, "eval/health/fusion/rankme")) == 1
    assert frozen.data.metrics["time/eval_s"] > 0 and good.data.metrics["time/trial_s"] > 0
    # the parent keeps what the scheduler decided at each rung, rebuilt from the runs
    decisions = _parent_csv(client, parent, "scheduler_decisions.csv")
    assert decisions[["rung", "train.lr", "rank", "decision"]].values.tolist() == [
        [4, 2e-3, 1, "continued"], [4, 1e-12, 2, "stopped at 4"], [8, 2e-3, 1, "continued"]]
    assert frozen.data.metrics["train_flops"] < good.data.metrics["train_flops"]  # the compute it actually used
    trials = _parent_csv(client, parent, "trials.csv")
    assert trials["eval/health/fusion/rankme"].notna().all() and set(trials["evaluated_at"]) == {4, 12}
    assert trials.set_index("train.lr").loc[[2e-3, 1e-12], ["status", "steps"]].values.tolist() == [
        ["completed", 12], ["early_stopped", 4]]
    cut = trials[trials["train.lr"] == 1e-12].iloc[0]  # the sweep's table holds the stopped trial's evaluation
    assert cut["eval/health/fusion/rankme"] == pytest.approx(frozen.data.metrics["eval/health/fusion/rankme"])
    # resumed from a checkpoint, not from scratch: step 4 logged once. (A pause is not instant: the trial may
    # train on while Tune stops it, and retrain those steps from the rung checkpoint after the restart.)
    steps = [m.step for m in client.get_metric_history(good.info.run_id, "loss")]
    assert steps.count(4) == 1 and max(steps) == 12


def _wait_for_frozen_trial_while_the_other_is_paused(tmp_path: Path, parent: str, driver: subprocess.Popen,
                                                    log: Path, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "paused at step 4" in log.read_text() and _tune_saved_a_paused_trial(tmp_path / "sweeps"):
            _, children = _children(tmp_path, parent)
            if any(c.data.params.get("train.lr") == "1e-12" for c in children):
                return  # its child run opens as the trial starts, well before its trainer reaches step 4
        _check_alive(driver, log)
        time.sleep(0.3)
    raise TimeoutError(f"no paused trial beside a started one:\n{log.read_text()[-3000:]}")


def _tune_saved_a_paused_trial(sweeps: Path) -> bool:
    """Whether the experiment state Tune saved (what ``--resume`` reads) already holds the paused trial: Tune
    saves it every few seconds, so a driver killed just after the pause could leave a state from before it,
    and the resumed sweep then retrains that trial from scratch (seen once in a slow CI hour)."""
    from ray.tune import ExperimentAnalysis

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result files: by design
    try:
        trials = ExperimentAnalysis(str(next(sweeps.glob("r-*")))).trials
    except (StopIteration, ValueError, OSError):  # not saved yet, or mid-write
        return False
    return any(trial.status == "PAUSED" for trial in trials)


def _run_driver(sweep: Path, tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the sweep driver to its end; it must succeed within ``timeout``. On failure or timeout the assertion
    shows what the driver printed (a hang is otherwise a bare TimeoutExpired with the output cut to a few lines)."""
    try:
        done = subprocess.run(_driver(sweep, *args), env=_cluster_env(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        out, err = (text.decode(errors="replace") if isinstance(text, bytes) else text or ""
                    for text in (hung.stdout, hung.stderr))  # bytes on a timeout even with text=True
        pytest.fail(f"sweep driver {' '.join(args)} still running after {timeout:g} s:\n{out[-4000:]}\n{err[-2000:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cluster_env() -> dict:
    """The driver joins the session's cluster (as on a real cluster) so killing it ends only its own job."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def _kill_driver_once(sweep: Path, tmp_path: Path, wait_for) -> tuple[str, object]:
    """Start the sweep driver, wait until ``wait_for(tmp_path, parent_run_id, driver, log)`` returns, then kill it
    (no cleanup, no final bookkeeping). Returns the parent run id and what ``wait_for`` returned."""
    log = tmp_path / "driver.log"
    env = {**_cluster_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune saves its state every second, not 10
    with log.open("w") as out:
        driver = subprocess.Popen(_driver(sweep, "--no-report"), env=env, cwd=tmp_path, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        parent = json.loads(_wait_for_state(tmp_path / "sweeps", driver, log).read_text())["parent_run_id"]
        return parent, wait_for(tmp_path, parent, driver, log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)


def _assert_trial_run(client, child) -> None:
    tags, metrics = child.data.tags, child.data.metrics
    assert child.info.status == "FINISHED" and tags["oskar.trial_status"] == "completed"
    assert tags["oskar.role"] == "trial" and tags["oskar.sweep"] == "r" and tags["oskar.trial_id"]
    assert tags["oskar.swept_params"] == "budget.input_tokens" and child.data.params["budget.input_tokens"]
    assert {"loss", "loss/video", "probe/fusion/knn_top1", "health/video/rankme", "eval/action/fusion/linear/top1",
            "eval/action/skeleton/knn/top1"} <= set(metrics)
    assert metrics["train_flops"] == pytest.approx(12 * metrics["flops_per_step"])
    history = client.get_metric_history(child.info.run_id, "eval/action/fusion/linear/top1")
    assert len(history) == 1  # evaluated exactly once


def _assert_parent_run(client, parent_id: str, children) -> None:
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["oskar.role"] == "sweep" and parent.data.tags["oskar.sweep"] == "r"
    assert parent.data.tags["oskar.swept_params"] == "budget.input_tokens"
    assert parent.data.params["sweep.space.budget.input_tokens"] == "[32, 48]"
    assert parent.data.tags["oskar.best_run_id"] in {c.info.run_id for c in children}
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "sweep.yaml", "scheduler_decisions.csv", "selected_trial.json"} <= artifacts
    selected = json.loads(Path(client.download_artifacts(parent_id, "selected_trial.json")).read_text())
    assert selected["run_id"] == parent.data.tags["oskar.best_run_id"] and selected["metric"].startswith("eval/")
    try:
        import oskar_ray.report  # noqa: F401  (the report is optional for the sweep)
    except ImportError:
        return
    assert "report" in artifacts


def _wait_for_state(root: Path, driver: subprocess.Popen, log: Path, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(root.glob("r-*/oskar_sweep.json"))
        if found:
            return found[0]
        _check_alive(driver, log)
        time.sleep(1)
    raise TimeoutError("the sweep never wrote its state file")


def _check_alive(driver: subprocess.Popen, log: Path) -> None:
    if driver.poll() is not None:
        raise AssertionError(f"the sweep driver exited early ({driver.returncode}):\n{log.read_text()[-3000:]}")
