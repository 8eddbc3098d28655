"""End to end: a short pretraining on a small SynthAction set, evaluated through the CLI and the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from oskar_ray.config import load_config
from oskar_ray.tracking import end_run, start_run

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"
FAST_EVAL = ["eval.probe_epochs=3", "eval.finetune_epochs=1", "eval.finetune_min_steps=3", "eval.finetune_max_steps=6",
             "eval.batch_size=32"]


def _cfg(tmp_path, synth_dir, *overrides):
    return load_config(SMOKE, [
        f"data.path={synth_dir}", "train.batch_size=8", "train.steps=8", "train.warmup_steps=2",
        f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=eval-test", *FAST_EVAL, *overrides])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synth_dir):
    """A real checkpoint directory (Ray-Train format) from a few single-process steps, with its MLflow run."""
    from oskar_ray.data.pipeline import iterate_local
    from oskar_ray.model import Oskar
    from oskar_ray.train import build_optimizer, train
    from oskar_ray.train.checkpoint import TrainState, save_checkpoint

    tmp = tmp_path_factory.mktemp("eval_e2e")
    cfg = _cfg(tmp, synth_dir)
    client, run_id = start_run(cfg, run_name="pretrain")
    model = Oskar(cfg)
    batches = iterate_local(synth_dir, "pretrain", cfg, cfg.train.batch_size, train=True, epochs=5, drop_last=True)
    train(cfg, batches, model=model)
    end_run(client, run_id)
    ckpt = save_checkpoint(tmp / "ckpt", model, build_optimizer(model, cfg), cfg, TrainState(8, run_id))
    return tmp, cfg, ckpt, run_id


def test_cli_evaluates_every_task_and_logs_to_the_pretraining_run(pretrained, tmp_path):
    from oskar_ray.eval.cli import main

    tmp, cfg, ckpt, run_id = pretrained
    out = tmp_path / "report"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--quiet",
                 "--tasks", "action,lowshot,localization,retrieval,vqa,health,robustness"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    for key in ("eval/action/video/attentive/top1", "eval/action/video/linear/top5", "eval/action/skeleton/knn/top1",
                "eval/action/fusion/linear/top1", "eval/action/video/finetune/top1",
                "eval/lowshot/video/linear/10pct/top1", "eval/lowshot/fusion/supervised/1pct/top1",
                "eval/lowshot/skeleton/finetune/100pct/top1", "eval/action/video/supervised/top1",
                "eval/action/video/linear/top1_ci95_lo", "eval/lowshot/video/finetune/10pct/top1_ci95_hi",
                "eval/localization/mAP_0.5", "eval/retrieval/t2v/R1",
                "eval/retrieval/v2t/medR", "eval/vqa/accuracy", "eval/vqa/type/colour/accuracy",
                "eval/health/video/rankme", "eval/robustness/video_only/attentive/top1",
                *(f"eval/robustness/no_{m}/attentive/top1" for m in ("video", "skeleton", "text"))):
        assert key in metrics, key
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k.endswith("top1") and v is not None)
    assert {p.name for p in out.glob("*.png")} == {"action.png", "localization.png", "retrieval.png", "lowshot.png"}
    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.data.metrics["eval/action/video/linear/top1"] == pytest.approx(metrics["eval/action/video/linear/top1"])
    artifacts = {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(run_id, "eval")}
    assert "eval/summary.json" in artifacts and "eval/action.png" in artifacts


def test_api_is_deterministic_and_baselines_log_to_child_runs(pretrained):
    from oskar_ray.eval import evaluate
    from oskar_ray.eval.api import evaluate_full

    tmp, cfg, ckpt, run_id = pretrained
    first = evaluate(ckpt, tasks=["retrieval", "health"], log=False, progress=False)
    again = evaluate(ckpt, tasks=["health", "retrieval"], log=False, progress=False)
    assert first == again
    assert "eval/retrieval/t2v/R1" in first and not any("zeroshot" in k for k in first)  # no video -> text term
    random = evaluate_full(ckpt, tasks=["retrieval"], baseline="random", progress=False)
    child = MlflowClient(cfg.tracking.uri).get_run(random.run_id)
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["eval.baseline"] == "random"
    assert "eval/retrieval/t2v/R1" in child.data.metrics


def test_bad_inputs_name_the_problem(pretrained, tmp_path):
    from oskar_ray.eval import evaluate

    _, cfg, ckpt, _ = pretrained
    with pytest.raises(ValueError, match="unknown eval task"):
        evaluate(ckpt, tasks=["nope"], log=False)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        evaluate(tmp_path, log=False)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        evaluate(ckpt, dataset=tmp_path, tasks=["action"], log=False)


def test_video_only_baseline_trains_the_same_steps_and_skips_other_modalities(pretrained, tmp_path):
    from oskar_ray.eval.api import evaluate_full

    _, _, ckpt, _ = pretrained
    result = evaluate_full(ckpt, tasks=["action", "retrieval", "robustness", "health"], baseline="video_only",
                           log=False, progress=False, cache_dir=tmp_path)
    assert "eval/action/video/linear/top1" in result.metrics
    assert not any("skeleton" in k or "retrieval" in k or "robustness" in k for k in result.metrics)
    # no text encoder: the text task is skipped with its reason on the run, not a crash or a zero
    assert result.tags["eval.retrieval.skipped"] == "the model has no text encoder"
    assert list(tmp_path.glob("video_only-*.safetensors"))  # cached for the next eval


def test_feature_cache_is_keyed_by_weights(pretrained, tmp_path):
    from oskar_ray.eval import evaluate

    _, _, ckpt, _ = pretrained
    trained = evaluate(ckpt, tasks=["health"], log=False, progress=False, cache_dir=tmp_path)
    random = evaluate(ckpt, tasks=["health"], baseline="random", log=False, progress=False, cache_dir=tmp_path)
    assert trained != random  # the random encoder must not be served the trained encoder's cached features
    assert len(list((tmp_path / "features").iterdir())) == 2
    assert evaluate(ckpt, tasks=["health"], log=False, progress=False, cache_dir=tmp_path) == trained


def test_a_checkpoint_given_as_a_storage_uri_evaluates_like_its_path(pretrained, tmp_path):
    """Cluster runs hand back checkpoints as URIs (``s3://…``; ``file://`` takes the same pyarrow path)."""
    from oskar_ray.eval import evaluate
    from oskar_ray.eval.cli import main

    _, _, ckpt, _ = pretrained
    by_path = evaluate(ckpt, tasks=["health"], log=False, progress=False)
    assert evaluate(ckpt.as_uri(), tasks=["health"], log=False, progress=False) == by_path
    out = tmp_path / "report"  # overrides on top of the checkpoint's own config.yaml, read through the URI
    assert main(["--checkpoint", ckpt.as_uri(), "--tasks", "health", "--out", str(out), "--quiet", "--no-log",
                 "--set", "eval.batch_size=16"]) == 0
    assert json.loads((out / "summary.json").read_text())["metrics"]


def test_a_downloaded_checkpoint_leaves_no_copy_behind(pretrained, tmp_path, monkeypatch):
    """A checkpoint on object storage is copied to a temp dir for loading, and that copy is removed."""
    import tempfile

    from oskar_ray import storage
    from oskar_ray.eval.api import load_model

    _, _, ckpt, _ = pretrained
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(storage, "is_local", lambda path: False)  # take the object-store branch for file://
    copies = []
    real_copy = storage.copy

    def spy(src, dst):
        copies.append(Path(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(storage, "copy", spy)
    model, cfg, source = load_model(ckpt.as_uri(), None)
    assert source["path"] == ckpt.as_uri() and source["step"] > 0 and model.cfg is cfg
    assert len(copies) == 1 and copies[0].parent.parent == tmp_path  # downloaded under the temp root ...
    assert not copies[0].exists() and not list(tmp_path.glob("oskar-checkpoint-*"))  # ... and removed


def test_a_feature_cache_written_for_fewer_views_is_extended(pretrained, tmp_path):
    from oskar_ray.eval.api import load_model
    from oskar_ray.eval.features import FeatureCache

    _, cfg, ckpt, _ = pretrained
    model, cfg, _ = load_model(ckpt, cfg)
    synth = cfg.data.path
    FeatureCache(model, synth, cfg, ["target:video"], progress=False, cache_dir=tmp_path).get("test", "target:video")
    wider = FeatureCache(model, synth, cfg, ["target:video", "fusion:video"], progress=False, cache_dir=tmp_path)
    assert wider.get("test", "fusion:video").pooled.shape[1] == cfg.model.dim
    assert set(torch.load(tmp_path / "test__clip.pt", weights_only=False)) == {"target:video", "fusion:video"}


def test_a_recipe_that_never_trains_text_is_evaluated_and_tagged(pretrained, tmp_path, synth_dir):
    from oskar_ray.eval.api import evaluate_full
    from oskar_ray.model import Oskar

    tmp, _, _, _ = pretrained
    cfg = _cfg(tmp, synth_dir, "budget.input_weights={video: 1, skeleton: 1, text: 0}",
               "budget.target_weights={video: 1, skeleton: 1, text: 0}")
    result = evaluate_full(Oskar(cfg), tasks=["retrieval"], cfg=cfg, log=False, progress=False)
    assert "eval/retrieval/t2v/R1" in result.metrics
    assert result.tags["eval.text"].startswith("text not trained")
    trained = evaluate_full(Oskar(cfg := _cfg(tmp, synth_dir)), tasks=["retrieval"], cfg=cfg, log=False,
                            progress=False)
    assert "eval.text" not in trained.tags


def test_a_failing_task_is_recorded_and_the_others_still_log(pretrained, monkeypatch, capsys):
    from oskar_ray.eval import api
    from oskar_ray.eval.cli import main

    _, cfg, ckpt, run_id = pretrained

    def broken(ctx):
        raise RuntimeError("probe exploded")

    monkeypatch.setitem(api.TASKS, "retrieval", broken)
    result = api.evaluate_full(ckpt, tasks=["retrieval", "health"], progress=False)
    assert result.errors == {"retrieval": "RuntimeError: probe exploded"}
    assert "eval/health/video/rankme" in result.metrics  # the task after the failure still ran
    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.data.tags["eval.retrieval.error"] == "RuntimeError: probe exploded"
    assert run.data.tags["eval.failed_tasks"] == "retrieval" and "eval/health/video/rankme" in run.data.metrics
    capsys.readouterr()
    assert main(["--checkpoint", str(ckpt), "--tasks", "retrieval,health", "--quiet", "--no-log"]) == 1
    captured = capsys.readouterr()
    assert "retrieval FAILED" in captured.out and "health ok" in captured.out
    assert "eval retrieval failed: RuntimeError: probe exploded" in captured.err


def test_the_cache_extracts_only_the_views_the_tasks_read_and_protocols_are_configurable(pretrained, tmp_path):
    from oskar_ray.eval.api import evaluate_full, task_views

    _, cfg, ckpt, _ = pretrained
    assert task_views(["action"], cfg) == ["target:video", "target:skeleton", "fusion:video+skeleton"]
    assert not any(v.count("+") == 2 for v in task_views(["action", "retrieval", "vqa"], cfg))  # robustness only
    sweep_sized = load_config(ckpt / "config.yaml", ["eval.action_protocols=[linear,knn]", "eval.vqa_views=[video]",
                                                     "eval.probe_epochs=1"])
    result = evaluate_full(ckpt, tasks=["action", "vqa"], cfg=sweep_sized, log=False, progress=False,
                           cache_dir=tmp_path)
    assert {"eval/action/video/linear/top1", "eval/action/fusion/knn/top1", "eval/vqa/accuracy"} <= set(result.metrics)
    assert not any("attentive" in k or "video+skeleton" in k for k in result.metrics)
    cached = torch.load(next((tmp_path / "features").glob("*/test__clip.pt")), weights_only=False)
    assert set(cached) == {"target:video", "target:skeleton", "fusion:video+skeleton"}
    with pytest.raises(ValueError, match=r"eval\.action_protocols: unknown value 'svm'"):
        load_config(ckpt / "config.yaml", ["eval.action_protocols=[svm]"])


def test_tasks_a_dataset_cannot_serve_are_named_from_its_manifest(synth_dir, tmp_path):
    import shutil

    from oskar_ray.data import store
    from oskar_ray.eval.requirements import NEEDS, unservable
    from oskar_ray.metric_names import EVAL_TASKS

    assert set(NEEDS) == set(EVAL_TASKS)
    assert unservable(list(EVAL_TASKS), str(synth_dir)) == {}
    bare = tmp_path / "no_qa"
    shutil.copytree(synth_dir, bare)
    manifest = store.load_manifest(bare)
    manifest["vocab"]["answers"] = []
    del manifest["splits"]["val"]
    store.save_manifest(bare, manifest)
    problems = unservable(["action", "vqa", "health"], str(bare))
    assert set(problems) == {"vqa"}  # no val split: carved from train, every probe task still served
    assert "vocab.answers is empty (no question-answer annotations" in problems["vqa"]
    del manifest["splits"]["test"]
    store.save_manifest(bare, manifest)
    problems = unservable(["action", "vqa", "health"], str(bare))
    assert set(problems) == {"action", "vqa", "health"}
    assert "no split test" in problems["action"]


def test_a_dataset_without_val_or_lowshot_splits_is_evaluated_on_carves_of_train(pretrained, tmp_path):
    """A user's pretrain / train / test layout: every probe task runs, val and the low-shot subsets are carved
    from train (seeded, per class) and the run records how."""
    import shutil

    from oskar_ray.data import store
    from oskar_ray.eval.cli import main

    tmp, cfg, ckpt, run_id = pretrained
    user = tmp_path / "user"
    shutil.copytree(cfg.data.path, user)
    manifest = store.load_manifest(user)
    for split in ("val", "train_1pct", "train_10pct", "untrimmed"):
        del manifest["splits"][split]
    store.save_manifest(user, manifest)
    out = tmp_path / "out"
    # the frozen protocols suffice here (the end-to-end ones read the same carves: tests/test_finetune.py)
    assert main(["--checkpoint", str(ckpt), "--data", str(user), "--out", str(out), "--quiet",
                 "--set", "eval.action_protocols=[linear,knn]",
                 "--tasks", "action,lowshot,retrieval,vqa,health,robustness"]) == 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    for key in ("eval/action/video/linear/top1", "eval/lowshot/video/linear/1pct/top1",
                "eval/lowshot/skeleton/linear/10pct/top1", "eval/retrieval/t2v/R1", "eval/vqa/accuracy",
                "eval/health/video/rankme", "eval/robustness/video_only/attentive/top1"):
        assert key in metrics, key
    tags = MlflowClient(cfg.tracking.uri).get_run(run_id).data.tags
    assert tags["eval.split.val"].startswith("carved val: 0.1 of train per class, stratified by action, seed 0")
    assert tags["eval.split.train"].startswith("train less the carved val")
    assert "raised to one clip per class for" in tags["eval.split.train_1pct"]  # 1 % of ~3 clips per class
    assert tags["eval.split.train_1pct"].startswith("carved train_1pct") and tags["eval.split.test"] == \
        "stored split test"  # (exit code 0 above: no task failed; the run is shared with other tests' tags)
