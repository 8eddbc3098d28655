"""The suite's two lanes (tests/conftest.py): when pytest-xdist runs it with ``--dist loadgroup`` over two
workers, each test carries its lane as its xdist group, the unit lane runs at the idle scheduling class with one
torch thread and the slow lane as it would alone. A pytest or xdist upgrade that stops xdist from seeing the
groups (pytest 9.2 with xdist 3.8: every test spread over both workers at equal priority, slower than serial)
fails here instead of silently slowing CI. Skipped when the suite runs in one process (``pytest -n 0``)."""

from __future__ import annotations

import os

import pytest
import torch

#: the two lanes' xdist groups (tests/conftest.py SLOW_LANE, UNIT_LANE; conftest is not imported: pytest loads it
#: under its own module name)
SLOW_LANE, UNIT_LANE = "slow", "unit"


def _lanes_requested(config: pytest.Config) -> bool:
    # the worker's own option, set by xdist from the controller's --dist
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) >= 2 and getattr(config.option, "loadgroup", False)


def test_a_unit_test_runs_in_the_unit_lane_at_the_idle_class_with_one_thread(request):
    if not _lanes_requested(request.config):
        pytest.skip("not run in lanes (pytest -n 0, or without --dist loadgroup)")
    assert request.node.nodeid.endswith(f"@{UNIT_LANE}"), "xdist no longer reads the tests' groups"
    if {item.nodeid.rpartition("@")[2] for item in request.session.items} != {SLOW_LANE, UNIT_LANE}:
        pytest.skip("only the unit lane selected: it runs alone, at normal priority with its threads")
    if hasattr(os, "SCHED_IDLE"):
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
    assert torch.get_num_threads() == 1  # (also fails if an earlier unit test left torch's threads changed)


@pytest.mark.slow
def test_a_slow_test_runs_in_the_slow_lane_as_it_would_alone(request):
    if not _lanes_requested(request.config):
        pytest.skip("not run in lanes (pytest -n 0, or without --dist loadgroup)")
    assert request.node.nodeid.endswith(f"@{SLOW_LANE}"), "xdist no longer reads the tests' groups"
    if hasattr(os, "SCHED_IDLE"):
        assert os.sched_getscheduler(0) != os.SCHED_IDLE


def test_a_test_with_its_own_xdist_group_fails_with_the_reason(tmp_path):
    """A third group could reach the unit lane's worker after its own and run there at SCHED_IDLE: refused."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_own_group.py").write_text(
        "import pytest\n\n\n@pytest.mark.xdist_group('db')\ndef test_in_its_own_group():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this repository's addopts
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "xdist_group ['db']" in done.stdout and "remove the test's own group" in done.stdout


def test_last_failed_reruns_what_failed_in_either_mode_and_forgets_what_passed(tmp_path):
    """``--lf`` in one process (``pytest -n 0``) after a lanes run reruns only the failure (pytest's record keeps
    the lane's id, ``...@unit``, which one process does not produce: it ran the whole suite), and in lanes after a
    run in one process; the record keeps one id a failure, none once the test passes."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_flaky.py").write_text(
        "from pathlib import Path\n\n\ndef test_fails_until_fixed():\n"
        "    assert Path(__file__).with_name('fixed').exists()\n\n\ndef test_passes():\n    pass\n")
    # not this repository's addopts; the cache where this test reads it
    (tmp_path / "pytest.ini").write_text("[pytest]\ncache_dir = .pytest_cache\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TOX_"))}
    failing = "test_flaky.py::test_fails_until_fixed"

    def run(*args: str) -> tuple[str, set[str]]:
        """The summary line of a pytest run on the temporary suite, and the ids its record then holds."""
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(tmp_path / "pytest.ini"), *args,
                               str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        lines = done.stdout.strip().splitlines() or [f"no output; stderr: {done.stderr[-2000:]}"]
        record = json.loads((tmp_path / ".pytest_cache" / "v" / "cache" / "lastfailed").read_text())
        return lines[-1], {nodeid.rpartition("/")[2] for nodeid in record}

    lanes = ("-n", "2", "--dist", "loadgroup")
    summary, record = run(*lanes)
    assert summary.startswith("1 failed, 1 passed") and record == {f"{failing}@unit"}, (summary, record)
    # when --lf matches nothing the whole file reruns: "1 failed, 1 passed"
    summary, record = run("-n", "0", "--lf")
    assert summary.startswith("1 failed") and "passed" not in summary and record == {failing}, (summary, record)
    summary, record = run(*lanes, "--lf")
    assert summary.startswith("1 failed") and "passed" not in summary, (summary, record)
    assert record == {f"{failing}@unit"}
    (tmp_path / "fixed").touch()
    summary, record = run("-n", "0", "--lf")
    assert summary.startswith("1 passed") and record == set(), (summary, record)
