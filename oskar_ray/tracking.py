"""MLflow conventions: where runs go, what every run records.

* URI: ``tracking.uri`` → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<cwd>/mlflow.db``
  (no server needed; ``mlflow ui --backend-store-uri sqlite:///mlflow.db``).
* On a cluster whose store only the head reaches (SQLite file, server on the
  head's 127.0.0.1), workers log through a relay actor on the driver's node
  (``oskar_ray/relay.py``, ``tracking.relay``); :func:`client_for` picks it.
* One run per pretraining run; the *driver* creates it and owns its status
  (FINISHED / FAILED with the error recorded), rank 0 logs metrics into it by
  id, and a resumed run continues the same id — retries never duplicate runs.
* Params: the flattened resolved config. Tags: git sha, data fingerprint,
  torch/ray/mlflow versions. Artifacts: resolved config, weights, curves.

Everything goes through ``MlflowClient`` with explicit run ids, so no global
"active run" state leaks between processes or threads.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .config import OskarConfig

#: MLflow refuses more than 100 params per log_batch call
_PARAMS_PER_CALL = 100


def tracking_uri(cfg: OskarConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client_for(uri: str) -> MlflowClient:
    """A client for ``uri``; in a Ray worker of a job whose driver started a relay for it
    (``oskar_ray.relay``: the store is reachable from the driver's node only), the relay's."""
    if "ray" not in sys.modules:  # not a Ray process, so no relay: never import Ray just to look
        return MlflowClient(tracking_uri=uri)
    from . import relay

    actor = relay.find(uri)
    return relay.RelayClient(uri, actor) if actor is not None else MlflowClient(tracking_uri=uri)


#: MLflow 3's UI opens an experiment by its kind: this one is the runs table of model training, not the
#: GenAI traces view it would otherwise infer for an experiment it cannot classify
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if not found.tags.get("mlflow.experimentKind"):  # made before the tag was set: tag it once
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        # keep artifacts beside the SQLite file, not in whatever cwd a worker has
        db = Path(client.tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def versions() -> dict[str, str]:
    import mlflow
    import ray
    import torch

    return {"version.torch": torch.__version__, "version.ray": ray.__version__,
            "version.mlflow": mlflow.__version__}


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def data_fingerprint(cfg: OskarConfig) -> str:
    """sha256 of the dataset manifest (or the name of the built-in example stream)."""
    if not cfg.data.path:
        return "example-stream"
    from . import storage

    manifest = storage.join(cfg.data.path, "manifest.json")
    if not storage.is_file(manifest):
        return "unknown"
    return hashlib.sha256(storage.read_bytes(manifest)).hexdigest()[:16]


def start_run(cfg: OskarConfig, *, run_name: str = "", parent_run_id: str | None = None,
              extra_tags: dict[str, str] | None = None) -> tuple[MlflowClient, str]:
    """Create a run with params (flattened config) and standard tags; returns (client, run id)."""
    client = client_for(tracking_uri(cfg))
    experiment_id = ensure_experiment(client, cfg.tracking.experiment)
    tags = {"git_sha": git_sha(), "data_fingerprint": data_fingerprint(cfg), **versions(), **(extra_tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name or cfg.tracking.run_name or None, tags=tags)
    log_params(client, run.info.run_id, cfg.flat())
    return client, run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_text(v)) for k, v in params.items()]
    for i in range(0, len(items), _PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i:i + _PARAMS_PER_CALL])


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    now = int(time.time() * 1000)
    batch = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=batch)


def _metric_key(key: str) -> str:
    # MLflow keys allow letters, digits, _ - . / and space; keep ours readable
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def end_run(client: MlflowClient, run_id: str, error: str | None = None) -> None:
    if error:
        set_tags(client, run_id, {"error": error})
    client.set_terminated(run_id, status="FAILED" if error else "FINISHED")


def log_loss_curve(client: MlflowClient, run_id: str, path: Path) -> None:
    """A PNG of total and per-modality loss vs step, logged as an artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in client.get_run(run_id).data.metrics if k == "loss" or k.startswith("loss/")]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted(keys):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ax.plot([m.step for m in history], [m.value for m in history], label=key, lw=2 if key == "loss" else 1)
    ax.set(xlabel="step", ylabel="latent prediction loss", title="OSKAR pretraining loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    client.log_artifact(run_id, str(path))
