"""The MLflow relay: when it is wanted, and that a Ray worker's calls land in the driver's store."""

from __future__ import annotations

import pytest

from oskar_ray import relay


@pytest.mark.parametrize("uri, local", [
    ("sqlite:////tmp/mlflow.db", True), ("/srv/mlruns", True), ("file:///srv/mlruns", True),
    ("http://127.0.0.1:5000", True), ("http://localhost:5000", True),
    ("https://mlflow.example.org", False), ("databricks", False), ("databricks://profile", False),
])
def test_node_local_uris(uri, local):
    assert relay.node_local_uri(uri) is local


def test_auto_mode_needs_a_joined_cluster_and_a_node_local_store(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not relay.wanted("auto", "sqlite:////tmp/m.db")  # a laptop: every process opens the file
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert relay.wanted("auto", "sqlite:////tmp/m.db")
    assert relay.wanted("auto", "http://127.0.0.1:5000")
    assert not relay.wanted("auto", "https://mlflow.example.org")  # every node reaches it
    assert relay.wanted("always", "https://mlflow.example.org") and not relay.wanted("never", "sqlite:////m.db")
    with pytest.raises(ValueError, match="tracking.relay='sometimes'"):
        relay.wanted("sometimes", "sqlite:////m.db")


def test_config_rejects_an_unknown_relay_mode():
    from pathlib import Path

    from oskar_ray.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    assert load_config(tiny).tracking.relay == "auto"
    with pytest.raises(ValueError, match="tracking.relay"):
        load_config(tiny, ["tracking.relay=sometimes"])


def test_a_workers_calls_go_through_the_relay_into_the_drivers_store(ray_local, tmp_path):
    import ray
    from mlflow.tracking import MlflowClient

    from oskar_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    direct = MlflowClient(uri)
    run_id = direct.create_run(tracking.ensure_experiment(direct, "relay")).info.run_id
    assert relay.find(uri) is None  # the driver itself always goes direct (and no relay yet)
    assert relay.start(uri, "always")
    assert relay.start(uri, "always")  # idempotent: finds the running actor

    @ray.remote(num_cpus=0.1)
    def worker(directory: str) -> dict:
        from pathlib import Path

        client = tracking.client_for(uri)
        tracking.log_metrics(client, run_id, {"loss": 0.5, "probe/fusion/knn_top1": 0.25}, step=7)
        tracking.set_tags(client, run_id, {"from": "worker"})
        Path(directory, "curve.txt").write_text("one")
        Path(directory, "plots").mkdir()
        Path(directory, "plots", "a.txt").write_text("two")
        client.log_artifact(run_id, str(Path(directory, "curve.txt")))
        client.log_artifacts(run_id, str(Path(directory, "plots")), artifact_path="plots")
        try:
            client.get_run("no-such-run")
            missing = "no error"
        except Exception as err:  # MLflow's own exception, re-raised through Ray
            missing = type(err).__name__
        return {"client": type(client).__name__, "status": client.get_run(run_id).info.status,
                "missing": missing}

    seen = ray.get(worker.remote(str(tmp_path)))
    assert seen["client"] == "RelayClient", seen
    assert seen["status"] == "RUNNING"
    assert "MlflowException" in seen["missing"]
    run = direct.get_run(run_id)
    assert run.data.metrics == {"loss": 0.5, "probe/fusion/knn_top1": 0.25} and run.data.tags["from"] == "worker"
    assert [m.step for m in direct.get_metric_history(run_id, "loss")] == [7]
    artifacts = {a.path for where in (None, "plots") for a in direct.list_artifacts(run_id, where)}
    assert {"curve.txt", "plots", "plots/a.txt"} <= artifacts
    actor = ray.get_actor(relay.relay_name(uri))
    placed = {a["ActorID"]: a for a in ray._private.state.actors().values()}
    assert placed[actor._actor_id.hex()]["Address"]["NodeID"] == ray.get_runtime_context().get_node_id()
    relay.stop(uri)
