"""MLflow through the driver's node: a relay actor for clusters where only the head reaches the store.

On a laptop every process opens the SQLite store (or the server) itself. On a
cluster the tracking server listens on the head's 127.0.0.1 (``cluster.yaml``:
never an open port) and a SQLite store is a file on the head's disk, so a
training worker or a sweep trial on a GPU node cannot reach either. The
driver — which runs on the head (``ray job submit``) — then starts one
:class:`TrackingRelay` actor pinned to its own node (0 CPUs) that owns an
``MlflowClient``; :func:`oskar_ray.tracking.client_for` in any Ray worker of
the job finds it by name and returns a :class:`RelayClient`, which forwards
every ``MlflowClient`` call (metrics, tags, runs, searches) and ships
artifact files as bytes. One actor also serialises the job's writes into a
SQLite store, which SQLite prefers.

When (``tracking.relay``):

* ``auto`` (default) — on when the driver joined an existing cluster
  (``$RAY_ADDRESS`` set, as under ``ray job submit``) *and* the tracking URI
  only works on this node (``sqlite:``, ``file:``, a path, or an
  ``http(s)://`` server on localhost/127.0.0.1); a URI every node can reach
  (a shared server, Databricks) goes direct;
* ``always`` / ``never``.

Runbook::

    RAY_ADDRESS=auto oskar pretrain --config ...        # relay starts by itself (auto)
    oskar pretrain --config ... --set tracking.relay=always  # force it, e.g. to test a multi-node setup
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray

from .ray_runtime import in_ray_worker

#: actor name prefix; the suffix is a digest of the tracking URI (one relay per store and job)
RELAY_NAME = "oskar-mlflow-relay"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
MODES = ("auto", "always", "never")
#: the driver's handles of its relays, by (tracking URI, Ray job id)
_HANDLES: dict[tuple[str, str], Any] = {}


def relay_name(uri: str) -> str:
    import hashlib

    return f"{RELAY_NAME}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def node_local_uri(uri: str) -> bool:
    """Whether ``uri`` reaches the store only from this machine (a file, or a server on loopback)."""
    if uri.startswith("databricks"):
        return False
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("", "file", "sqlite") or len(scheme) == 1:  # "C:" is a path
        return True
    if scheme in ("http", "https"):
        return (urlsplit(uri).hostname or "").lower() in LOCAL_HOSTS
    return False


def wanted(mode: str, uri: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"tracking.relay={mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "always"
    return bool(os.environ.get("RAY_ADDRESS")) and node_local_uri(uri)


@ray.remote(num_cpus=0, max_concurrency=1)
class TrackingRelay:
    """Owns the job's ``MlflowClient`` on the driver's node; one call at a time."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        if method.startswith("_"):
            raise AttributeError(f"MlflowClient.{method} is not relayed")
        return getattr(self.client, method)(*args, **kwargs)

    def log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None, as_dir: bool) -> None:
        """Write the shipped files under a temp dir and log them (one file, or a directory tree)."""
        with tempfile.TemporaryDirectory() as tmp:
            for relative, data in files.items():
                target = Path(tmp, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if as_dir:
                self.client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
            else:
                (relative,) = files
                self.client.log_artifact(run_id, str(Path(tmp, relative)), artifact_path=artifact_path)


def start(uri: str, mode: str) -> bool:
    """Start this job's relay for ``uri`` on the driver's node if ``mode`` wants one; True if running.

    Call from the driver after ``ray.init``. Idempotent; the actor lives as long as the
    driver holds its handle (i.e. the driver's lifetime).
    """
    if not wanted(mode, uri) or not ray.is_initialized() or in_ray_worker():
        return False
    key = (uri, ray.get_runtime_context().get_job_id())
    if key in _HANDLES:  # the creating handle must stay: dropping it ends the actor
        return True
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = TrackingRelay.options(name=relay_name(uri), scheduling_strategy=(
        NodeAffinitySchedulingStrategy(here, soft=False))).remote(uri)
    ray.get(actor.call.remote("search_experiments", (), {"max_results": 1}))  # fail here, not in a worker
    _HANDLES[key] = actor  # a named actor without handles is garbage-collected: the driver keeps one
    print(f"MLflow: workers log through a relay on the driver's node ({uri})", flush=True)
    return True


def stop(uri: str) -> None:
    """End this driver's relay for ``uri`` (every caller waits for its calls: none is pending)."""
    actor = _HANDLES.pop((uri, ray.get_runtime_context().get_job_id()), None)
    if actor is not None:
        ray.kill(actor)


def find(uri: str):
    """This job's relay actor for ``uri``, when called in a Ray worker and one runs; else None."""
    if not in_ray_worker():
        return None
    try:
        return ray.get_actor(relay_name(uri))
    except ValueError:
        return None


class RelayClient:
    """An ``MlflowClient`` look-alike whose calls run in the relay actor (synchronously)."""

    def __init__(self, uri: str, actor):
        self.tracking_uri, self._actor = uri, actor

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def relayed(*args, **kwargs):
            return ray.get(self._actor.call.remote(method, args, kwargs))

        relayed.__name__ = method
        return relayed

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        self._ship(run_id, {path.name: path.read_bytes()}, artifact_path, as_dir=False)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        root = Path(local_dir)
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        self._ship(run_id, files, artifact_path, as_dir=True)

    def _ship(self, run_id: str, files: dict[str, bytes], artifact_path: str | None, as_dir: bool) -> None:
        ray.get(self._actor.log_files.remote(run_id, files, artifact_path, as_dir))
