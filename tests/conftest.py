"""Shared fixtures: a session-wide local Ray, the real-data fixture folder, the smoke config, a tiny synth set;
and the suite's two lanes.

Two lanes (pytest-xdist, ``-n 2 --dist loadgroup`` in pyproject.toml): every test is in one of two groups, so
each of the two workers runs one group start to end. ``slow`` (Ray, multi-process, long in-process training:
the ``slow`` marker or the ``ray_local`` fixture) runs one test at a time at normal priority, as it would
alone; ``unit`` (everything else) runs beside it with one torch thread at ``SCHED_IDLE``, so it only takes CPU
time the slow lane leaves idle (Ray's tests wait on process starts much of the time) and never preempts it.
At equal priority, two torch thread pools on 2 cores lose: the fast tests took 267 s over two workers against
193 s in one (docs/results.md, "Eleventh pass"). ``pytest -n 0`` runs the whole suite in one process, one test
at a time (also what ``--pdb`` needs); ``--lf`` reruns what failed in either mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _pytest.cacheprovider import LFPlugin

REPO = Path(__file__).resolve().parents[1]
#: the lane (xdist group) of Ray, multi-process and long tests, run at normal priority one at a time
SLOW_LANE = "slow"
#: the lane of every other test, run beside the slow lane on the CPU time it leaves idle
UNIT_LANE = "unit"
#: the lanes this session runs (after selection), and whether this worker has yielded the cores
_LANES_RUN, _YIELDED = pytest.StashKey[set](), pytest.StashKey[bool]()


def _lane(item: pytest.Item) -> str:
    return SLOW_LANE if item.get_closest_marker("slow") or "ray_local" in item.fixturenames else UNIT_LANE


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_lane(item)))


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_LANES_RUN] = {_lane(item) for item in session.items}


def _lane_ids(nodeid: str) -> set[str]:
    """A test's ids in either mode: in lanes xdist appends ``@<lane>``, in one process (``pytest -n 0``) not."""
    base = nodeid
    for lane in (SLOW_LANE, UNIT_LANE):
        base = base.removesuffix(f"@{lane}")
    return {base, *(f"{base}@{lane}" for lane in (SLOW_LANE, UNIT_LANE))}


class _LastFailedInEitherMode:
    """pytest keys its last-failed record by the id a test failed under, and only lanes append ``@<lane>``: so
    ``pytest -n 0 --lf`` after a lanes run matched nothing and ran the whole suite. Under ``--lf`` / ``--ff`` the
    record gets each failed test's ids in the other mode for this session; a test's report leaves it recorded
    under the id it just failed as, or under none once it passes; the added ids are not saved."""

    def __init__(self, last_failed: LFPlugin) -> None:
        self.record = last_failed.lastfailed  # the dict pytest filters by and saves
        self.added: set[str] = set()
        if last_failed.active:
            for nodeid in [n for n in self.record if "::" in n]:  # tests, not modules that failed to collect
                self.added |= _lane_ids(nodeid) - self.record.keys()
            self.record.update(dict.fromkeys(self.added, True))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        passed = (report.when == "call" and report.passed) or report.skipped
        if not (passed or report.failed):
            return
        for nodeid in _lane_ids(report.nodeid) - (set() if passed else {report.nodeid}):
            self.record.pop(nodeid, None)
        self.added -= _lane_ids(report.nodeid)  # a failure is recorded by pytest under the id it ran as

    @pytest.hookimpl(tryfirst=True)  # before pytest's cache plugin saves the record
    def pytest_sessionfinish(self) -> None:
        for nodeid in self.added:
            self.record.pop(nodeid, None)


@pytest.hookimpl(trylast=True)  # after pytest's cache plugin has read the record
def pytest_configure(config: pytest.Config) -> None:
    last_failed = config.pluginmanager.get_plugin("lfplugin")
    if last_failed is not None:
        config.pluginmanager.register(_LastFailedInEitherMode(last_failed), "oskar-last-failed-either-mode")


def _yields_the_cores(item: pytest.Item) -> bool:
    """Whether ``item`` runs in the unit lane's worker while the slow lane runs beside it: both lanes selected,
    and two groups over two or more workers under ``--dist loadgroup`` (which appends each test's group to its
    node id, the unit xdist schedules) give each worker at most one group. (So a worker never has to return from
    ``SCHED_IDLE``, which an unprivileged process cannot do; and unit tests run alone keep their threads.)"""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    return (workers >= 2 and item.nodeid.endswith(f"@{UNIT_LANE}")
            and item.config.stash.get(_LANES_RUN, set()) == {SLOW_LANE, UNIT_LANE})


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """In the unit lane's worker, before its first test: one torch thread (two lanes' thread pools spinning on 2
    cores slowed both) and ``SCHED_IDLE`` for this thread and every thread and process it starts from then on
    (nice 19 where the platform has no idle class). Once per worker; a lane never switches back."""
    own_groups = {mark.args[0] if mark.args else mark.kwargs.get("name")
                  for mark in item.iter_markers("xdist_group")} - {SLOW_LANE, UNIT_LANE}
    if own_groups:  # a third group could reach the unit lane's worker after its own, and run there at SCHED_IDLE
        pytest.fail(f"xdist_group {sorted(own_groups)}: tests/conftest.py gives every test its lane (slow or unit); "
                    f"remove the test's own group", pytrace=False)
    if item.config.stash.get(_YIELDED, False) or not _yields_the_cores(item):
        return
    import torch

    torch.set_num_threads(1)
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif hasattr(os, "nice"):
        os.nice(19)
    item.config.stash[_YIELDED] = True


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
