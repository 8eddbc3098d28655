"""Scale-out: cluster.yaml / cluster.local.yaml against Ray's own validator, the local
cluster round trip (experiments/local_cluster.sh up | submit | down) and node loss
mid-run on a multi-node ``ray.cluster_utils.Cluster``.

The two slow tests start their own Ray clusters in subprocesses (own GCS, own temp
dir, free ports), never touching the session's ``ray_local`` nor anyone else's Ray
on the machine; each tears its cluster down in ``finally`` and asserts that no
process of it is left.

Run as a script (``python tests/test_cluster.py '<json>'``) this file is the node-loss
driver that ``test_node_loss_resumes_from_the_last_checkpoint_on_the_remaining_nodes``
starts in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import ray  # also puts the psutil Ray ships (ray/thirdparty_files) on sys.path
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "local_cluster.sh"
SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"
MARKER = "OSKAR_TEST_CLUSTER_ID"


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


# ---- configs ----------------------------------------------------------------------------

def test_cloud_cluster_yaml_validates_with_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _yaml("cluster.yaml")
    prepared = prepare_config(cfg)  # merges Ray's AWS defaults; no cloud credentials needed
    validate_config(prepared)
    assert cfg["provider"]["type"] == "aws" and cfg["idle_timeout_minutes"] > 0
    types = cfg["available_node_types"]
    assert all("resources" in t for t in types.values())
    head, worker = types[cfg["head_node_type"]], types["ray.worker.gpu"]
    assert head["resources"] == {"CPU": 0}
    assert worker["resources"]["GPU"] == 8 and worker["min_workers"] == 0 < worker["max_workers"]


def test_local_cluster_yaml_validates_and_has_the_cloud_layout():
    from ray.autoscaler._private.util import validate_config

    local, cloud = _yaml("cluster.local.yaml"), _yaml("cluster.yaml")
    validate_config(local)  # not prepare_config: it looks for an example YAML missing from the 2.60 wheel
    assert local["provider"]["type"] == "fake_multinode"
    assert set(local["available_node_types"]) == set(cloud["available_node_types"])
    assert local["head_node_type"] == cloud["head_node_type"] == "ray.head.default"
    for name, node in local["available_node_types"].items():
        assert node.get("min_workers", 0) == cloud["available_node_types"][name].get("min_workers", 0)
    assert local["available_node_types"]["ray.head.default"]["resources"]["CPU"] == 0


def test_cluster_yaml_binds_services_to_localhost_and_holds_no_secrets():
    text = (REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in text
    assert "--dashboard-host=127.0.0.1" in text and "--host 127.0.0.1 --port 5000" in text
    assert '--artifacts-destination "$OSKAR_STORAGE/mlflow-artifacts"' in text
    for secret in ("aws_secret_access_key", "AWS_SECRET", "aws_access_key_id", "PRIVATE KEY", "password="):
        assert secret.lower() not in text.lower()


def test_local_cluster_refuses_an_autoscaler_interval_ray_cannot_read(tmp_path):
    """Ray reads AUTOSCALER_UPDATE_INTERVAL_S as an integer: 0.5 would crash the autoscaler and leave jobs waiting
    for worker nodes forever. `up` refuses it with the variable and the rule, before starting anything."""
    state = tmp_path / "state"
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "0.5", "OSKAR_CLUSTER_DIR": str(state)}
    done = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "AUTOSCALER_UPDATE_INTERVAL_S=0.5: must be a whole number of seconds >= 1" in done.stderr
    assert not state.exists()  # nothing started, nothing written


# ---- helpers ----------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes(key: str, value: str, path: str, grace_s: float = 20.0) -> list:
    """Processes whose environment has ``key=value`` or whose command line names ``path`` and that
    are still alive ``grace_s`` after the caller's shutdown (on a loaded machine Ray's daemons can
    take seconds to exit after ``ray.shutdown``: one still exiting is not a leak)."""
    import psutil  # the copy Ray ships (ray/thirdparty_files), on sys.path since `import ray` above

    found = []
    for proc in psutil.process_iter():
        try:
            if (value and proc.environ().get(key) == value) or any(path in a for a in proc.cmdline()):
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    _, alive = psutil.wait_procs(found, timeout=grace_s)
    return alive


def _kill(procs) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def _short_tmp() -> Path:
    # Ray's unix socket paths must stay under ~107 characters: pytest's tmp_path is too deep
    return Path(tempfile.mkdtemp(prefix="oskar-t-", dir="/tmp"))


# ---- the local cluster round trip ---------------------------------------------------------

@pytest.mark.slow
def test_local_cluster_round_trip_with_a_failing_and_a_finishing_job(synth_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from oskar_ray.train.checkpoint import read_state

    state = _short_tmp()
    port, dashboard, client = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OSKAR_STORAGE")}
    env.update(OSKAR_CLUSTER_PORT=str(port), OSKAR_DASHBOARD_PORT=str(dashboard), OSKAR_CLIENT_PORT=str(client),
               OSKAR_CLUSTER_DIR=str(state), OSKAR_PYTHON=sys.executable,
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")

    def script(*args: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path)

    cluster_id, leftover, down = "", [], None
    started, phases = time.time(), {}
    try:
        up = script("up", timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        cluster_id = (state / "cluster_id").read_text().strip()
        phases["up"] = time.time() - started
        # a job that fails makes `submit` fail, with the job's error in its output; it runs beside the good job
        # (two drivers on one cluster, as users submit them; each job's start-up is seconds of imports)
        bad = subprocess.Popen(["bash", str(SCRIPT), "submit", "--set", f"data.path={tmp_path / 'nowhere'}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                               start_new_session=True)  # its `ray job submit` child goes with it if killed
        try:
            good = script("submit", "--set", f"data.path={synth_dir}", "--set",
                          f"train.output_dir={tmp_path / 'runs'}", "--set", "tracking.run_name=rehearsal",
                          "--set", "train.batch_size=8", "--set", "train.steps=10", "--set", "train.checkpoint_every=5",
                          "--set", "train.warmup_steps=2", "--set", "data.shuffle_buffer=16",
                          "--set", "eval.batch_size=16", timeout=480)
            bad_output = bad.communicate(timeout=240)[0]
        finally:
            if bad.poll() is None:
                os.killpg(bad.pid, signal.SIGKILL)
                bad.wait()
        assert bad.returncode != 0 and "no manifest.json" in bad_output, bad_output[-3000:]
        assert good.returncode == 0, good.stdout[-6000:] + good.stderr[-3000:]
        # a job joined the cluster with a store on the head: its workers log through the relay
        assert "workers log through a relay" in good.stdout, good.stdout[-3000:]
        phases["jobs"] = time.time() - started - phases["up"]
        status = script("status", timeout=60)
        assert "ray.worker.gpu" in status.stdout, status.stdout  # the autoscaler added worker nodes
    finally:
        down = script("down", timeout=180)
        leftover = _processes("OSKAR_LOCAL_CLUSTER_ID", cluster_id, str(state))
        _kill(leftover)  # never leak processes into the rest of CI, even if `down` is broken
        shutil.rmtree(state, ignore_errors=True)
    print(f"local cluster round trip: {time.time() - started:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not leftover, [" ".join(p.cmdline())[:120] for p in leftover]

    run_dir = tmp_path / "runs" / "rehearsal"
    assert sorted(read_state(c).step for c in run_dir.glob("checkpoint_*") if c.is_dir()) == [5, 10]
    mlflow = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.get_experiment_by_name("oskar-local-cluster")
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'rehearsal'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert max(m.step for m in mlflow.get_metric_history(runs[0].info.run_id, "loss")) == 10


# ---- node loss ----------------------------------------------------------------------------

STEPS = 15  # checkpoints at 5 and 10: the node dies once Ray Train registered the first (or, on a busy machine,
#            the second: the run trains on while the node is killed), the restart trains on to 15


@pytest.mark.slow
def test_node_loss_resumes_from_the_last_checkpoint_on_the_remaining_nodes(synth_dir, tmp_path):
    ray_tmp = _short_tmp()
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OSKAR_STORAGE")}
    # a heavily loaded machine can start a node's agents slowly: give raylets time to see them
    env.update({MARKER: marker, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_agent_register_timeout_ms": "120000"})
    args = json.dumps({"synth": str(synth_dir), "out": str(tmp_path), "tmp": str(ray_tmp)})
    try:
        proc = subprocess.run([sys.executable, __file__, args], env=env, capture_output=True, text=True,
                              timeout=420, cwd=tmp_path)
    finally:
        leftover = _processes(MARKER, marker, str(ray_tmp))
        _kill(leftover)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    print(f"node loss: {result}")
    assert not leftover, [p.pid for p in leftover]
    assert not result["error"], result["error"]
    assert result["workers_before"] == 2 and result["hosts"] == 2  # one training worker per node
    # the node died mid-run (before the last step's checkpoint) and the restarted workers skipped what was trained
    restarted = re.match(r"worker restarted at step (\d+): skipped the \1 batches", result["stream_restart"])
    assert restarted, result
    resumed_from = int(restarted[1])
    assert 5 <= result["at_removal"] <= resumed_from < STEPS, result
    assert result["final_step"] == STEPS and result["status"] == "FINISHED"
    logged = result["loss_steps"]
    assert logged[-1] == STEPS and set(logged) == set(range(5, STEPS + 1, 5))
    # continued from its last checkpoint: steps up to it were logged once (a restart from scratch
    # would log them again), every later step at least once
    assert all(logged.count(s) == 1 for s in range(5, resumed_from + 1, 5)), logged


def _node_loss_driver(args: dict) -> None:
    """Head (CPU 0) + 3 worker nodes of 3 CPUs; a 2-worker pretraining (2 CPUs per training
    worker: one per node, 1 CPU left there for Ray Data); once Ray Train has registered a
    checkpoint, the node hosting a training worker is killed. Prints ``RESULT <json>``."""
    from ray.cluster_utils import Cluster

    out = Path(args["out"])
    # fast health checks: a killed node is declared dead within ~2 s
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 * 1024**2,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}})
    try:
        nodes = [cluster.add_node(num_cpus=3, object_store_memory=200 * 1024**2) for _ in range(3)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        _lose_a_node_mid_run(cluster, nodes, out, args["synth"])
    finally:
        ray.shutdown()
        cluster.shutdown()


def _lose_a_node_mid_run(cluster, nodes, out: Path, synth: str) -> None:
    from mlflow.tracking import MlflowClient

    from oskar_ray.config import load_config
    from oskar_ray.train.checkpoint import read_state
    from oskar_ray.train.ray_trainer import pretrain

    cfg = load_config(SMOKE, [
        f"data.path={synth}", "train.batch_size=8", f"train.steps={STEPS}", "train.log_every=5",
        "train.checkpoint_every=5", "train.keep_checkpoints=10", "train.warmup_steps=5", "train.num_workers=2",
        "train.cpus_per_worker=2", "train.max_failures=2", "eval.rankme_every=100", "eval.batch_size=16",
        # storage given as a URI (pyarrow's file:// filesystem: the code path of s3://) and MLflow through
        # the relay on the head: rank 0 sits on a worker node, as on a cluster whose store only the head reaches
        "data.shuffle_buffer=16", f"train.output_dir={(out / 'runs').as_uri()}", f"tracking.uri=sqlite:///{out}/m.db",
        "tracking.experiment=node-loss", "tracking.relay=always"])
    run_dir = out / "runs" / "nodeloss"
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = pretrain(cfg, run_name="nodeloss")
        except BaseException as err:  # reported in RESULT
            outcome["error"] = repr(err)

    def registered_steps() -> list[int]:
        # what Ray Train has *registered*: a checkpoint directory on disk is not enough (one uploaded
        # but not yet registered when its node dies is not restored from)
        try:
            snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return []
        return [c["metrics"]["step"] for c in snapshot.get("checkpoint_results", [])]

    started = time.time()
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    while not registered_steps() and thread.is_alive():
        time.sleep(0.1)
    at_removal = max(registered_steps(), default=0)
    workers = [a for a in ray._private.state.actors().values()
               if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
    hosts = {a["Address"]["NodeID"] for a in workers}
    victim = next((n for n in nodes if n.node_id in hosts), None)
    if victim is not None:
        cluster.remove_node(victim, allow_graceful=False)
    removed_after = time.time() - started
    thread.join(timeout=300)
    report = {"error": outcome.get("error"), "at_removal": at_removal, "hosts": len(hosts),
              "workers_before": len(workers), "removed_after_s": round(removed_after, 1),
              "total_s": round(time.time() - started, 1)}
    if victim is None:  # the run ended before its first checkpoint was registered: nothing was lost
        report["error"] = f"no live training worker at the first checkpoint ({at_removal}): {outcome}"
    elif thread.is_alive():
        report["error"] = "pretraining still running 300 s after the node loss"
    if "result" in outcome:
        result = outcome["result"]
        client = MlflowClient(f"sqlite:///{out}/m.db")
        run = client.get_run(result.run_id)
        report.update(final_step=read_state(result.checkpoint).step, status=run.info.status,
                      stream_restart=run.data.tags.get("data.stream_restart", ""),
                      loss_steps=sorted(m.step for m in client.get_metric_history(result.run_id, "loss")))
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    _node_loss_driver(json.loads(sys.argv[1]))
