"""The MLflow experiment an OSKAR run logs to (real SQLite store)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from oskar_ray.tracking import ensure_experiment


def test_experiments_open_on_the_runs_table_of_model_training(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    made = ensure_experiment(client, "oskar-fresh")
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("oskar-older")  # from before the tag: the UI would infer its kind
    assert ensure_experiment(client, "oskar-older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
