"""Shared fixtures: a session-wide local Ray, the real-data fixture folder, a tiny config, a tiny synth set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (init costs ~5 s): quiet, no dashboard, temp dir in pytest's tmp."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    tmp = tmp_path_factory.mktemp("ray")  # short enough for Ray's unix socket paths (< 107 chars)
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    if not ray.is_initialized():
        # 4 logical CPUs on 2 cores: room for fractional map_batches tasks next to a driver/trainer
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp))
    yield tmp
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public samples, see its SOURCES.md); skip when absent."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data fixtures not found at {path}")
    return path


@pytest.fixture
def tiny_cfg():
    from oskar_ray.config import load_config

    return load_config(REPO / "experiments" / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A ~130-clip SynthAction set generated once per session (in-process, ~1 s)."""
    from oskar_ray.data.synth import SynthSpec, generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(SynthSpec(samples=130, seed=3, workers=1, untrimmed_frames=32), out, progress=False)
    return out
