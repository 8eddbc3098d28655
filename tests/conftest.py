"""Shared fixtures: a session-wide local Ray, the real-data fixture folder, the smoke config, a tiny synth set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _ray_tmp(tmp_path_factory):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    tmp = tmp_path_factory.mktemp("ray")  # short enough for Ray's unix socket paths (< 107 chars)
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    yield tmp
    import ray

    ray.shutdown()


@pytest.fixture
def ray_local(_ray_tmp):
    """One local Ray for the session (init costs ~5 s): quiet, no dashboard, temp dir in pytest's tmp. Started
    again, with the same shape, when a test in between shut it down (``oskar sweep`` run in-process does):
    otherwise the next run would start a default-sized Ray whose extra trial slots change what sweeps do (two
    synchronous-halving trials at once on 2 cores starved each other's data reads: a hang)."""
    import ray

    from oskar_ray.ray_runtime import TRIAL_SLOT

    if ray.is_initialized() and ray.cluster_resources().get(TRIAL_SLOT) != 1:
        ray.shutdown()  # a Ray some test started its own way (a default-sized one): not the shape tests assume
    if not ray.is_initialized():
        # 4 logical CPUs on 2 cores: room for fractional map_batches tasks next to a driver/trainer;
        # one trial slot: sweeps under synchronous halving run one trial at a time (others wait paused)
        ray.init(num_cpus=4, resources={TRIAL_SLOT: 1}, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(_ray_tmp))
    return _ray_tmp


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public samples, see its SOURCES.md); skip when absent."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data fixtures not found at {path}")
    return path


@pytest.fixture
def smoke_cfg():
    from oskar_ray.config import load_config

    return load_config(REPO / "experiments" / "configs" / "smoke.yaml")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A ~130-clip labelled SynthAction set with a 200-clip pretrain split, generated once per session
    (in-process, ~2 s).

    The pretrain split holds the 160 clips of a 20-step x 8 Ray Train run; the 30-step
    ``test_one_worker_learns_checkpoints_and_tracks_to_a_real_mlflow_server`` streams two epochs.
    """
    from oskar_ray.data.synth import SynthSpec, generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    spec = SynthSpec(samples=130, pretrain_samples=200, seed=3, workers=1, untrimmed_frames=32)
    generate(spec, out, progress=False)
    return out


def write_ntu(path: Path, bodies_per_frame: list[list[tuple[str, object]]], truncate_lines: int = 0) -> Path:
    """Write an NTU RGB+D ``.skeleton`` text file: per frame a list of (bodyID, (25, 3) joints)."""
    import numpy as np

    lines = [str(len(bodies_per_frame))]
    for bodies in bodies_per_frame:
        lines.append(str(len(bodies)))
        for body_id, joints in bodies:
            lines.append(f"{body_id} 0 1 1 1 1 0 0.02 0.05 2")
            lines.append("25")
            for x, y, z in np.asarray(joints, dtype=float):
                lines.append(f"{x} {y} {z} 270.1 190.2 1030.5 510.3 0.1 0.2 0.9 -0.1 2")
    if truncate_lines:
        lines = lines[:-truncate_lines]
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.fixture
def ntu_writer():
    return write_ntu


def standing_pose(offset: float = 0.0, t: float = 0.0, swing: float = 0.0):
    """A plausible (25, 3) camera-space pose at ~3.5 m, arms swinging with ``swing`` · sin(t)."""
    import numpy as np

    from oskar_ray.data.motion import kinematics

    zero = np.zeros(1)
    angles = {"l_arm": np.stack([zero + 0.2 + swing * np.sin(t), zero, zero + 0.3, zero]),
              "r_arm": np.stack([zero + 0.2, zero, zero + 0.3, zero]),
              "l_leg": np.stack([zero, zero]), "r_leg": np.stack([zero, zero]),
              "root": np.zeros((3, 1)), "pitch": zero, "heading": zero}
    lengths = {"torso": 0.5, "neck": 0.1, "head": 0.15, "shoulder": 0.18, "upper_arm": 0.3, "forearm": 0.25,
               "hand": 0.08, "hip": 0.1, "thigh": 0.42, "shin": 0.4, "foot": 0.12}
    return kinematics(angles, lengths)[0] + np.array([offset, 0.0, 3.5])


@pytest.fixture
def pose():
    return standing_pose
