"""Sweep machinery without Ray: specs, grid validation, FLOPs, the online probe, dataset checks, decisions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.probes.online import loo_knn_top1
from oskar_ray.tune.flops import flops_per_step
from oskar_ray.tune.spec import (
    edit_spec,
    load_spec,
    spec_from_dict,
    trial_overrides,
    tune_space,
    validate_points,
)

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "experiments" / "configs" / "sweeps"
SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_and_profile_is_valid(path):
    import yaml

    for profile in ["", *sorted(yaml.safe_load(path.read_text()).get("profiles") or {})]:
        spec = load_spec(path, profile)
        assert validate_points(spec) >= 2
        assert spec.swept_keys()


def test_token_budget_defaults_and_smoke_profile():
    spec = load_spec(SWEEPS / "token_budget.yaml")
    assert spec.space == {"budget.input_tokens": {"grid": [32, 64, 128]},
                          "budget.target_tokens": {"grid": [16, 48]}}
    assert validate_points(spec) == 6
    # ranked and selected on the video encoder, not the skeleton-saturated fusion probe; every task evaluated
    assert (spec.scheduler.metric, spec.select.metric) == ("probe/video/knn_top1", "eval/action/video/linear/top1")
    assert spec.base_config().eval.tasks == ["action", "lowshot", "retrieval", "vqa"]
    smoke = load_spec(SWEEPS / "token_budget.yaml", "smoke")
    assert validate_points(smoke) == 2
    assert smoke.overrides[: len(spec.overrides)] == spec.overrides  # profile overrides are appended
    assert smoke.scheduler.grace_period < smoke.base_config().train.steps


def test_invalid_grid_points_are_all_named_up_front():
    spec = spec_from_dict({"name": "bad", "base": str(SMOKE), "space": {
        "budget.input_tokens": [32, 128], "budget.target_tokens": [16, 200]}})
    with pytest.raises(ValueError) as err:
        validate_points(spec)
    text = str(err.value)
    assert "3 of 4 grid points are invalid" in text
    assert "budget.input_tokens=128, budget.target_tokens=16" in text and "exceeds" in text


def test_spec_errors_name_the_field():
    base = {"name": "x", "base": str(SMOKE), "space": {"train.lr": [1e-3]}}
    for change, field in [({"scheduler": {"kind": "hyperband"}}, "scheduler.kind"),
                          ({"space": {"train.lr": {"uniform": [1]}}}, "space.train.lr.uniform"),
                          ({"surprise": 1}, "surprise"), ({"select": {"mode": "up"}}, "select.mode")]:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            spec_from_dict({**base, **change})


def test_metrics_no_trial_would_log_are_refused_before_any_trial_starts():
    probing = ["eval.tasks=[action]", "eval.online_probe_views=[fusion]", "eval.online_probe_every=10"]
    base = {"name": "x", "base": str(SMOKE), "space": {"train.lr": [1e-3, 2e-3]}, "overrides": probing}
    for change, named in [({"scheduler": {"metric": "probe/video/knn_top1"}}, "probe/fusion/knn_top1"),
                          ({"scheduler": {"metric": "online/fusion"}}, "is not a metric trials log"),
                          ({"scheduler": {"metric": "eval/action/video/linear/top1"}}, "only logged after"),
                          ({"overrides": probing[:2], "scheduler": {"metric": "probe/mean"}}, "logs nothing"),
                          ({"select": {"metric": "eval/vqa/accuracy"}}, "task 'vqa' is not in eval.tasks"),
                          ({"select": {"metric": "accuracy"}}, "eval/<task>/"),
                          ({"overrides": [*probing, "eval.action_protocols=[linear,knn]"],
                            "select": {"metric": "eval/action/video/attentive/top1"}}, "runs linear, knn"),
                          ({"overrides": [*probing[1:], "eval.tasks=[vqa]", "eval.vqa_views=[video]"],
                            "select": {"metric": "eval/vqa/video+skeleton/accuracy"}}, "eval.vqa_views=['video']"),
                          ({"overrides": [*probing[1:], "eval.tasks=[vqa]", "eval.vqa_views=[video+skeleton]"],
                            "select": {"metric": "eval/vqa/accuracy"}}, "eval.vqa_views=['video+skeleton']"),
                          ({"overrides": [*probing, "eval.finetune_epochs=0"],
                            "select": {"metric": "eval/action/video/supervised/top1"}}, "eval.finetune_epochs=0"),
                          ({"select": {"metric": "eval/action/video/linear/top1_ci95_hi"}}, "end of a 95 % interval"),
                          ({"overrides": [*probing[1:], "eval.tasks=[lowshot]", "eval.finetune_epochs=0"],
                            "select": {"metric": "eval/lowshot/video/finetune/10pct/top1"}}, "the lowshot task runs"),
                          ({"space": {"budget.nonexistent": [1, 2]}}, "unknown config key budget.nonexistent")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            validate_points(spec_from_dict({**base, **change}))
    for scheduler, select in [("probe/fusion/knn_top1", "eval/action/video/linear/top1"), ("loss/align", "loss"),
                              ("reg/var", "probe/mean"), ("health/video/rankme", "eval/action/fusion/knn/top1")]:
        validate_points(spec_from_dict({**base, "scheduler": {"metric": scheduler}, "select": {"metric": select}}))


def test_a_sweeps_base_follows_the_config_loaders_rule(tmp_path, monkeypatch):
    """Relative to the sweep file, whatever the working directory (as a config YAML's own ``base:``)."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "exp.yaml").write_text(f"base: {SMOKE}\nbudget: {{input_tokens: 48}}\n")
    sweep = tmp_path / "configs" / "s.yaml"
    sweep.write_text("name: s\nbase: exp.yaml\nspace: {train.lr: [1.0e-3, 2.0e-3]}\n")
    monkeypatch.chdir(REPO)  # a cwd where exp.yaml does not exist
    assert load_spec(sweep).base_config().budget.input_tokens == 48
    sweep.write_text("name: s\nbase: gone.yaml\nspace: {train.lr: [1.0e-3]}\n")
    with pytest.raises(FileNotFoundError, match="s.yaml: base 'gone.yaml' not found"):
        load_spec(sweep)


def test_cli_edits_and_variant_axes():
    spec = spec_from_dict({"name": "m", "base": str(SMOKE), "space": {"mods": {"variants": {
        "video": ["modalities.skeleton.enabled=false", "modalities.text.enabled=false"], "all": []}}}})
    assert spec.swept_keys() == ["modalities.skeleton.enabled", "modalities.text.enabled"]
    assert trial_overrides(spec, {"mods": "video"}) == ["modalities.skeleton.enabled=false",
                                                        "modalities.text.enabled=false"]
    edited = edit_spec(spec, grid=["train.lr=0.001,0.01"], overrides=["train.steps=5"], max_concurrent=1,
                       scheduler_kind="fifo")
    assert edited.space["train.lr"] == {"grid": [0.001, 0.01]} and edited.overrides == ["train.steps=5"]
    assert edited.scheduler.kind == "fifo" and edited.max_concurrent == 1 and spec.scheduler.kind == "asha"
    assert trial_overrides(edited, {"train.lr": 0.01, "eval.online_probe_views": ["fusion"]}) == [
        "train.lr=0.01", "eval.online_probe_views=[fusion]"]
    assert validate_points(edited) == 4


def test_flops_estimate_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from oskar_ray.model import Oskar

    for overrides in ([], ["budget.input_tokens=32", "predictor.kind=concat"]):
        cfg = load_config(SMOKE, ["train.batch_size=4", *overrides])
        model = Oskar(cfg)
        with FlopCounterMode(display=False) as counter:
            model(model.example_batch(4))["loss"].backward()
        assert flops_per_step(cfg) == pytest.approx(counter.get_total_flops(), rel=0.15)
    small, big = (flops_per_step(load_config(SMOKE, [f"budget.input_tokens={n}"])) for n in (32, 96))
    assert big > small


def test_leave_one_out_knn():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    centres = torch.randn(4, 16) * 10
    separable = centres[labels] + torch.randn(40, 16)
    assert loo_knn_top1(separable, labels, k=5, n_classes=4) == 1.0
    noise = torch.randn(400, 16)
    assert loo_knn_top1(noise, torch.randint(0, 4, (400,)), k=5, n_classes=4) < 0.4
    duplicates = torch.randn(2, 16).repeat_interleave(2, 0)
    # a point may not vote for itself: its twin carries the other label
    assert loo_knn_top1(duplicates, torch.tensor([0, 1, 0, 1]), k=1, n_classes=2) == 0.0
    # k at or past the other rows: every other row votes (what a float64 leave-one-out vote gives)
    feats, labels = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    unit = torch.nn.functional.normalize(feats.double(), dim=1)
    sims = (unit @ unit.T).fill_diagonal_(-float("inf"))
    votes = torch.zeros(6, 3, dtype=torch.double).scatter_add_(1, labels.expand(6, 6), (sims / 0.07).exp())
    expected = float((votes.argmax(1) == labels).double().mean())
    assert loo_knn_top1(feats, labels, k=5, n_classes=3) == pytest.approx(expected)
    assert loo_knn_top1(feats, labels, k=50, n_classes=3) == pytest.approx(expected)


def test_the_leave_one_out_vote_refuses_a_query_set_that_is_not_the_train_set():
    from oskar_ray.probes.heads import knn_scores

    with pytest.raises(ValueError, match="exclude_self"):
        knn_scores(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.randn(5, 4), 2, exclude_self=True)


def test_grid_points_start_in_a_seeded_shuffled_order():
    spec = load_spec(SWEEPS / "token_budget.yaml")
    space, points = tune_space(spec)
    assert set(space) == {"budget.input_tokens", "budget.target_tokens"}
    grid = [{"budget.input_tokens": i, "budget.target_tokens": t} for i in (32, 64, 128) for t in (16, 48)]
    assert sorted(map(str, points)) == sorted(map(str, grid)) and points != grid  # each point once, not sorted
    assert tune_space(spec)[1] == points  # deterministic (seed)
    repeated = tune_space(edit_spec(spec, num_samples=2))[1]
    assert len(repeated) == 2 * len(grid) and repeated[:len(grid)] == points
    assert tune_space(edit_spec(spec, order="grid"))[1] == []  # Tune's own grid order


def test_eval_tasks_the_dataset_cannot_serve_are_refused_before_any_trial(synth_dir, tmp_path):
    import shutil

    from oskar_ray.data import store
    from oskar_ray.tune.runner import check_eval_tasks

    data = tmp_path / "no_qa"
    shutil.copytree(synth_dir, data)
    manifest = store.load_manifest(data)
    manifest["vocab"]["answers"] = []
    store.save_manifest(data, manifest)
    spec = spec_from_dict({"name": "x", "base": str(SMOKE), "space": {"train.lr": [1e-3]},
                           "overrides": [f"data.path={data}", "eval.tasks=[action,vqa]"]})
    with pytest.raises(ValueError, match=r"cannot serve eval task\(s\) 'vqa': manifest vocab.answers is empty") as err:
        check_eval_tasks(spec, spec.base_config())
    assert "--set eval.tasks=[action]" in str(err.value)
    check_eval_tasks(spec, spec.base_config(["eval.tasks=[action]"]))


def test_a_scheduler_ranking_on_the_probe_refuses_a_dataset_without_labelled_held_out_clips(synth_dir, tmp_path):
    import shutil

    from oskar_ray.data import store
    from oskar_ray.tune.runner import check_scheduler_signal

    data = tmp_path / "pretrain_only"
    shutil.copytree(synth_dir, data)
    manifest = store.load_manifest(data)
    manifest["splits"] = {"pretrain": manifest["splits"]["pretrain"]}
    store.save_manifest(data, manifest)
    spec = spec_from_dict({"name": "x", "base": str(SMOKE), "space": {"train.lr": [1e-3]},
                           "overrides": [f"data.path={data}", "eval.online_probe_every=4"],
                           "scheduler": {"kind": "sha", "metric": "probe/mean", "grace_period": 4}})
    with pytest.raises(ValueError, match=r"ranks trials on probe/mean.*no split 'val' and no 'train' split.*fifo"):
        check_scheduler_signal(spec, spec.base_config())
    check_scheduler_signal(edit_spec(spec, scheduler_kind="fifo"), spec.base_config())  # nothing to rank: fine
    # a dataset with a labelled train split: the probe reads a carve of it, no refusal
    check_scheduler_signal(spec, spec.base_config([f"data.path={synth_dir}"]))


def test_the_online_probe_reads_a_carve_of_train_when_the_dataset_has_no_val(synth_dir, tmp_path):
    import shutil

    from oskar_ray.data import store
    from oskar_ray.data.splits import SplitPlan
    from oskar_ray.model import Oskar
    from oskar_ray.probes.online import OnlineProbe

    data = tmp_path / "no_val"
    shutil.copytree(synth_dir, data)
    manifest = store.load_manifest(data)
    del manifest["splits"]["val"]
    store.save_manifest(data, manifest)
    cfg = load_config(SMOKE, [f"data.path={data}", "eval.online_probe_every=4", "eval.online_probe_k=3"])
    probe, off = OnlineProbe.from_config(cfg, torch.device("cpu"))
    assert off == "" and len(probe.labels) == len(SplitPlan.from_config(str(data), cfg).source("val").rows)
    scores = probe(Oskar(cfg))
    assert set(scores) >= {"probe/video/knn_top1", "probe/mean"}
    none, why = OnlineProbe.from_config(load_config(SMOKE, [f"data.path={data}"]), torch.device("cpu"))
    assert none is None and "online_probe_every is 0" in why


def test_scheduler_decisions_are_rebuilt_from_the_runs_even_off_the_rung_steps():
    from types import SimpleNamespace

    from oskar_ray.tune.decisions import scheduler_decisions
    from oskar_ray.tune.results import TrialRow

    spec = spec_from_dict({"name": "x", "base": str(SMOKE), "space": {"train.lr": [1, 2, 3]},
                           "scheduler": {"kind": "asha", "metric": "probe/mean", "grace_period": 10,
                                         "reduction_factor": 3}})
    # probes every 15 steps: the scheduler ranked each trial on its first report past a rung (10: step 15)
    curves = {"a": [(15, 0.9), (30, 0.9), (45, 0.9), (60, 0.9)], "b": [(15, 0.5), (30, 0.6), (45, 0.4)],
              "c": [(15, 0.1)]}
    rows = [TrialRow("a", {"train.lr": 1}, "completed", 60, 1.0),
            TrialRow("b", {"train.lr": 2}, "early_stopped", 45, 1.0),
            TrialRow("c", {"train.lr": 3}, "early_stopped", 15, 1.0)]
    client = SimpleNamespace(get_metric_history=lambda run_id, key: [SimpleNamespace(step=s, value=v)
                                                                       for s, v in curves[run_id]])
    runs = {t: SimpleNamespace(info=SimpleNamespace(run_id=t)) for t in curves}
    frame = scheduler_decisions(client, spec, rows, runs, train_steps=60)
    got = frame[["rung", "trial_id", "probe/mean", "rank", "decision"]].values.tolist()
    assert got == [[10, "a", 0.9, 1, "continued"], [10, "b", 0.5, 2, "continued"], [10, "c", 0.1, 3, "stopped at 10"],
                   [30, "a", 0.9, 1, "continued"], [30, "b", 0.6, 2, "stopped at 30"]]


def test_a_trial_whose_run_finished_before_the_driver_died_reports_it_again_without_training(tmp_path,
                                                                                             monkeypatch):
    """``--resume`` after a driver died between a trial's end and Tune's next save of its state: Tune starts
    the trial again, which finds its FINISHED child run and re-reports it — no second pretraining or
    evaluation (the end-to-end sweeps reach this only by chance)."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from oskar_ray.tune import trial as trial_module
    from oskar_ray.tune.trial import STATUS, TRIAL_ID, TrialSetup, run_trial

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep")
    parent = client.create_run(experiment).info.run_id
    done = client.create_run(experiment, tags={TRIAL_ID: "t_00001", "mlflow.parentRunId": parent,
                                               STATUS: "completed"})
    run_id = done.info.run_id
    client.log_param(run_id, "train.steps", "12")
    for key, value in {"loss": 0.5, "eval/action/fusion/linear/top1": 0.75, "train_flops": 3e10}.items():
        client.log_metric(run_id, key, value, step=12)
    client.set_terminated(run_id, "FINISHED")
    spec = spec_from_dict({"name": "r", "base": str(SMOKE), "space": {"train.lr": [1e-3, 2e-3]},
                           "select": {"metric": "eval/action/fusion/linear/top1"}})
    setup = TrialSetup(spec, [], parent, uri, experiment)
    reported = []
    monkeypatch.setattr(tune, "get_context", lambda: type("Ctx", (), {"get_trial_id": lambda self: "t_00001"})())
    monkeypatch.setattr(tune, "report", reported.append)
    monkeypatch.setattr(trial_module, "train_and_evaluate", lambda *a: pytest.fail("the finished trial retrained"))
    run_trial({"train.lr": 2e-3}, setup)
    assert reported == [{"loss": 0.5, "eval/action/fusion/linear/top1": 0.75, "train_flops": 3e10, "step": 12}]
    assert client.get_run(run_id).info.status == "FINISHED"  # left as it was
    assert len(client.search_runs([experiment], filter_string=f"tags.`{TRIAL_ID}` = 't_00001'")) == 1
