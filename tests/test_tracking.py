"""The MLflow experiment an OSKAR run logs to (real SQLite store)."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from oskar_ray.tracking import ensure_experiment


def test_experiments_open_on_the_runs_table_of_model_training(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    made = ensure_experiment(client, "oskar-fresh")
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("oskar-older")  # from before the tag: the UI would infer its kind
    assert ensure_experiment(client, "oskar-older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_pretraining_driver_does_not_import_mlflow_before_it_opens_its_run():
    """``oskar pretrain`` opens its MLflow run in a thread while Ray starts; MLflow's 1.7 s of imports go with
    it only if nothing imported MLflow before (oskar_ray/tracking.py imports it on first use)."""
    code = ("import sys, oskar_ray.cli, oskar_ray.train.ray_trainer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
