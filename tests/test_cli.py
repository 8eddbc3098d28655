"""The ``oskar`` command line: pretrain writes weights + resolved config; bad config → exit 2."""

import pytest

from oskar_ray.cli import main
from oskar_ray.config import load_config
from oskar_ray.model import Oskar

SMOKE = "experiments/configs/smoke.yaml"


def test_local_pretrain_is_the_same_run_in_one_process(tmp_path, capsys, synth_dir):
    """``--local``: the configured dataset, an MLflow run with the losses, throughput, stage times and the Ray
    worker's health check (at the last step here: ``eval.rankme_every`` 100), the resolved config, the loss
    curve and the weights (beside the run and as artifacts)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["train.steps=4", "train.batch_size=4", "train.log_every=2", f"train.output_dir={tmp_path}",
            "tracking.run_name=smoke", f"tracking.uri={uri}", f"data.path={synth_dir}"]
    assert main(["pretrain", "--local", "--config", SMOKE, *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "smoke"
    cfg = load_config(run / "config.yaml")
    assert cfg.train.steps == 4 and cfg.data.path == str(synth_dir)
    Oskar(cfg).load_weights(run / "weights.safetensors")
    out = capsys.readouterr().out
    assert "step      2/4" in out and "samples/s" in out and str(synth_dir) in out
    client = MlflowClient(uri)
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert logged.info.status == "FINISHED" and logged.data.tags["launcher"] == "local"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "loss")] == [2, 4]
    assert {"samples_per_s", "time/tracking_s", "time/monitor_s", "time/data_s", "time/steps_s",
            "health/video/rankme", "health/collapse_alarm"} <= set(logged.data.metrics)
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "health/video/std")] == [4]
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "loss_curve.png", "weights"} <= artifacts


@pytest.mark.parametrize("fatal", [False, True])
def test_a_local_collapse_alarm_is_tagged_and_stops_the_run_only_when_fatal(tmp_path, capsys, synth_dir, fatal):
    """The Ray worker's health check mid-run: each check's readings logged at its step, the alarm tagged; with
    ``eval.collapse_fatal`` the run stops after logging the step the alarm rose — FAILED with the reason, no
    weights, a clear error and exit code 2 — else it trains on and finishes."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # every std reading is "low" against a threshold of 10 (that of L2-normalised features is at most 1): the
    # alarm rises at the first check (patience 1)
    sets = ["train.steps=4", "train.batch_size=4", "train.log_every=2", "eval.rankme_every=2",
            "eval.collapse_std=10", "eval.collapse_patience=1", f"eval.collapse_fatal={str(fatal).lower()}",
            f"train.output_dir={tmp_path}", "tracking.run_name=collapse", f"tracking.uri={uri}",
            f"data.path={synth_dir}"]
    code = main(["pretrain", "--local", "--config", SMOKE, *[a for s in sets for a in ("--set", s)]])
    client = MlflowClient(uri)
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    alarms = client.get_metric_history(logged.info.run_id, "health/collapse_alarm")
    losses = client.get_metric_history(logged.info.run_id, "loss")
    if fatal:
        assert code == 2
        assert "pretraining stopped: representation collapse at step 2" in capsys.readouterr().err
        assert logged.info.status == "FAILED" and logged.data.tags["error"] == "representation collapse at step 2"
        assert [(m.step, m.value) for m in alarms] == [(2, 1.0)] and [m.step for m in losses] == [2]
        assert logged.data.tags["health.collapse_alarm"] == "step 2"
        assert not (tmp_path / "collapse" / "weights.safetensors").exists()
    else:
        assert code == 0 and logged.info.status == "FINISHED"
        assert sorted((m.step, m.value) for m in alarms) == [(2, 1.0), (4, 1.0)] and len(losses) == 2
        assert logged.data.tags["health.collapse_alarm"] == "step 4"
        assert (tmp_path / "collapse" / "weights.safetensors").is_file()


def test_a_local_non_finite_loss_fails_the_run_as_through_ray(tmp_path, capsys, synth_dir):
    """The same end as the Ray run's (``test_train_ray.py``): exit code 2, ``pretraining stopped: non-finite loss
    at step N``, the run FAILED with that reason as its error tag, no weights."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["train.steps=4", "train.batch_size=4", "train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=0",
            f"train.output_dir={tmp_path}", "tracking.run_name=diverged", f"tracking.uri={uri}",
            f"data.path={synth_dir}"]
    assert main(["pretrain", "--local", "--config", SMOKE, *[a for s in sets for a in ("--set", s)]]) == 2
    assert "pretraining stopped: non-finite loss at step" in capsys.readouterr().err
    client = MlflowClient(uri)
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert logged.info.status == "FAILED" and logged.data.tags["error"].startswith("non-finite loss at step")
    assert not (tmp_path / "diverged" / "weights.safetensors").exists()


def test_bad_config_is_a_clear_error(capsys):
    assert main(["pretrain", "--config", SMOKE, "--set", "budget.input_tokens=0"]) == 2
    assert "budget.input_tokens must be positive" in capsys.readouterr().err
    assert main(["pretrain", "--config", "missing.yaml"]) == 2


def test_sweep_is_one_subcommand_with_the_sweep_scripts_flags(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--smoke"]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nbase: ../missing.yaml\nspace: {train.lr: [1.0e-3]}\n")
    assert main(["sweep", str(spec)]) == 2
    assert "base '../missing.yaml' not found" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--profile", "gpu"]) == 2
    assert "no profile 'gpu'" in capsys.readouterr().err


def test_a_resume_applies_safe_overrides_and_refuses_the_rest_naming_them(tmp_path, capsys):
    from oskar_ray.config import save_config
    from oskar_ray.train.resume import resume_config

    ckpt = tmp_path / "checkpoint_000001"
    save_config(load_config(SMOKE, ["train.steps=20"]), ckpt / "config.yaml")
    cfg, changes = resume_config(ckpt, overrides=["train.steps=40", "eval.knn_k=5"])
    assert cfg.train.steps == 40 and cfg.eval.knn_k == 5 and cfg.model.dim == load_config(SMOKE).model.dim
    assert changes == {"eval.knn_k": (20, 5), "train.steps": (20, 40)}
    assert resume_config(ckpt)[1] == {}
    with pytest.raises(ValueError, match=r"cannot change mid-run \(model\.dim: 128 -> 96; train\.lr: 0\.001 -> 0\.5\)"):
        resume_config(ckpt, overrides=["model.dim=96", "train.lr=0.5", "train.steps=40"])
    # a checkpoint stores its resolved data.path; a YAML naming the same data ("" = built-in, or relative) agrees
    resolved = tmp_path / "resolved"
    save_config(load_config(SMOKE, [f"data.path={tmp_path / 'ds'}"]), resolved / "config.yaml")
    assert "data.path" not in resume_config(resolved, SMOKE)[1]
    # through the CLI: never silently dropped
    assert main(["pretrain", "--resume", str(ckpt), "--set", "budget.input_tokens=8"]) == 2
    assert "budget.input_tokens" in capsys.readouterr().err
