"""What an idle Ray Train run's processes cost a training step on this machine (Linux).

Runbook::

    python experiments/bench_background.py                      # tiny recipe, 4 x 2 segments of 25 steps
    python experiments/bench_background.py --set train.threads=1
    python experiments/bench_background.py --idle-class         # and segments with the run at SCHED_IDLE

An idle one-worker Ray Train run, started as ``oskar pretrain`` starts one (``start_ray``: the local cluster,
its environment; then the controller, its actors and the worker group, whose train function sleeps), runs in a
subprocess. This process times the run's model step (``train_step``, the run's threads) on batches read before
the clock, in alternating segments (ABBA, against the machine's drift): the idle run's processes running, and
the same processes frozen with SIGSTOP, which stops them without ending them. It prints the wake-ups a second of
each of those processes (context switches, ``/proc``) and the ratio of the two step times: what Ray's standing
processes cost a trainer that has every core, before any data moves (the step inside ``oskar pretrain`` pays
this on top of its stream; ``experiments/bench_stream.py`` measures the stream, docs/results.md the rest).
Beside each state it prints the idle run's CPU (all its processes, ``/proc/<pid>/stat``) as a share of one core.

``--idle-class`` adds a third state: the idle run's processes running with every thread at ``SCHED_IDLE``, the
class that never preempts a normal thread when it wakes up (set back to ``SCHED_OTHER`` after each segment; the
benchmark refuses the option where this process may not set a thread back). It separates what the wake-ups take
by preempting the trainer from what they cost whatever their priority.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
# segments as bench_stream.py times them (rounds, steps each, steps left out after a switch: thawed processes catch up)
from bench_stream import SEGMENT_STEPS, SEGMENTS, SETTLE_STEPS, abba, preloaded_batches, warmed_up_step  # noqa: E402

#: steps trained before the first segment (allocator, thread pool, autograd caches)
WARM_UP_STEPS = 3
#: seconds over which the idle run's wake-ups are counted
CENSUS_S = 5.0
#: the idle run's processes during a segment: as Ray runs them, stopped, or running at the lowest class
RUNNING, FROZEN, IDLE_CLASS = "running", "frozen", "at SCHED_IDLE"


def idle_run(config_path: str, overrides: list[str], folder: str, benchmark_pid: int) -> None:
    """The subprocess: a one-worker Ray Train run whose train function writes ``ready`` in ``folder``, then sleeps
    while ``keep`` is there (the benchmark removes it when done, or on its way out) and the benchmark lives."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from oskar_ray.config import load_config
    from oskar_ray.data.resolve import resolve_data
    from oskar_ray.train.ray_trainer import start_ray

    cfg = resolve_data(load_config(config_path, overrides))
    start_ray(cfg)

    def sleep_while_kept(config: dict) -> None:
        folder = Path(config["folder"])
        (folder / "ready").write_text("running")
        while (folder / "keep").exists() and Path(f"/proc/{config['benchmark_pid']}").exists():
            time.sleep(1)

    with tempfile.TemporaryDirectory() as storage:
        TorchTrainer(sleep_while_kept, train_loop_config={"folder": folder, "benchmark_pid": benchmark_pid},
                     scaling_config=ray.train.ScalingConfig(
                         num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
                     run_config=ray.train.RunConfig(name="idle", storage_path=storage)).fit()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _name(pid: int) -> str:
    """``ray::<actor>`` as Ray titles its workers; else the binary's name, or the script's for Python."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].strip()
    if Path(words[0]).name.startswith("python"):
        scripts = [w for w in words[1:] if w.endswith(".py")]
        return f"python {Path(scripts[0]).name}" if scripts else " ".join(words[:3])
    return Path(words[0]).name


def _context_switches(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each one a sleep, so one wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    return total


def _cpu_ticks(pid: int) -> int:
    """User + system CPU ticks of the process so far, all its threads (``/proc/<pid>/stat`` fields 14-15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return sum(int(v) for v in stat[stat.rindex(")") + 2:].split()[11:13])


def _counts(pids, count) -> dict[int, int]:
    """``count(pid)`` of each of ``pids``; processes that ended (or lost a thread while read) are left out: Ray
    ends idle pooled workers after a second."""
    counts = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            counts[pid] = count(pid)
    return counts


def _rates(before: dict[int, int], after: dict[int, int], seconds: float) -> dict[int, float]:
    """Per second, of the processes counted at both reads."""
    return {pid: (after[pid] - n) / seconds for pid, n in before.items() if pid in after}


def census(pids: list[int]) -> list[tuple[float, str]]:
    """Wake-ups a second of each process over :data:`CENSUS_S` (while this process sleeps); processes that
    ended meanwhile are left out."""
    before = _counts(pids, _context_switches)
    time.sleep(CENSUS_S)
    rates = _rates(before, _counts(before, _context_switches), CENSUS_S)
    return sorted(((rate, _name(pid)) for pid, rate in rates.items()), reverse=True)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _set_class(pids, policy: int, best_effort: bool = False) -> int:
    """Every thread of ``pids`` to scheduling class ``policy`` (threads that ended meanwhile are skipped); returns
    how many threads refused (``best_effort``: counted and skipped; else the first refusal raises)."""
    refused = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:  # the process ended: Ray ends idle pooled workers after a second
            continue
        for tid in threads:
            try:
                os.sched_setscheduler(int(tid), policy, os.sched_param(0))
            except ProcessLookupError:
                pass
            except OSError:
                if not best_effort:
                    raise
                refused += 1
    return refused


def can_restore_normal_class() -> bool:
    """Whether this process may set a thread from ``SCHED_IDLE`` back to ``SCHED_OTHER`` (root, or a nice value
    inside ``RLIMIT_NICE``): tried on a thread of its own, never on the one that trains."""
    import threading

    result = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result == [True]


def timed_segments(step_on, batches: list, run_pid: int, touched: set[int],
                   states: tuple[str, ...] = (RUNNING, FROZEN)) -> tuple[dict, dict]:
    """Mean step seconds per segment in each of ``states`` (ABBA), and the idle run's CPU in cores per segment,
    both after the settle steps. ``touched`` collects every pid ever frozen or demoted (thawed and restored on the
    way out, even if no longer the run's descendant)."""
    times: dict[str, list[float]] = {state: [] for state in states}
    cores: dict[str, list[float]] = {state: [] for state in states}
    step = WARM_UP_STEPS
    for state in abba(states):
        changed = _descendants(run_pid) if state != RUNNING else []
        touched.update(changed)
        if state == FROZEN:
            _signal_all(changed, signal.SIGSTOP)
        elif state == IDLE_CLASS:
            _set_class(changed, os.SCHED_IDLE)
        try:
            steps = []
            for k in range(SEGMENT_STEPS):
                if k == SETTLE_STEPS:
                    cpu, wall = _counts(_descendants(run_pid), _cpu_ticks), time.perf_counter()
                started = time.perf_counter()
                step_on(batches[k], step)
                step += 1
                if k >= SETTLE_STEPS:
                    steps.append(time.perf_counter() - started)
            ticks = _rates(cpu, _counts(cpu, _cpu_ticks), time.perf_counter() - wall)
            cores[state].append(sum(ticks.values()) / os.sysconf("SC_CLK_TCK"))
        finally:
            _signal_all(changed, signal.SIGCONT)
            if state == IDLE_CLASS:  # with the processes forked meanwhile: they inherited the class
                demoted = set(changed) | set(_descendants(run_pid))
                touched.update(demoted)
                _set_class(demoted, os.SCHED_OTHER)
        times[state].append(statistics.mean(steps))
    return times, cores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments/configs/tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--idle-class", action="store_true",
                        help="also time segments with the idle run's threads at SCHED_IDLE")
    parser.add_argument("--idle-run", metavar="FOLDER", help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.idle_class and not can_restore_normal_class():
        parser.error("--idle-class: this process may not set a thread back from SCHED_IDLE to SCHED_OTHER "
                     "(needs root or CAP_SYS_NICE, or an RLIMIT_NICE of at least 20 minus its nice value): the idle "
                     "run would stay demoted")
    args.config = str(Path(args.config).resolve())
    os.chdir(REPO)  # the built-in benchmark's path is relative to the repository
    if args.idle_run:
        idle_run(args.config, args.overrides, args.idle_run, os.getppid())
        return
    # a SIGTERM (a timeout, CI) or SIGHUP (a closed terminal) runs the clean-up below: nothing may stay frozen
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    from oskar_ray.config import load_config
    from oskar_ray.data.resolve import resolve_data

    cfg = resolve_data(load_config(args.config, args.overrides))
    # thawed processes catch up in the segment after a frozen one: running and demoted segments take turns there
    states = (RUNNING, FROZEN, IDLE_CLASS) if args.idle_class else (RUNNING, FROZEN)
    cfg.train.steps = WARM_UP_STEPS + len(states) * SEGMENTS * SEGMENT_STEPS  # every timed step inside the schedule
    batches = preloaded_batches(cfg, SEGMENT_STEPS)
    step_on = warmed_up_step(cfg, batches[:WARM_UP_STEPS])
    with tempfile.TemporaryDirectory() as tmp:
        folder, log = Path(tmp), Path(tmp) / "idle_run.log"
        (folder / "keep").write_text("")
        command = [sys.executable, __file__, "--config", args.config, "--idle-run", str(folder)]
        command += [f"--set={override}" for override in args.overrides]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster: all descendants
        with log.open("w") as out:
            run = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        print(f"idle Ray Train run: process group {run.pid} (should this benchmark be killed: "
              f"kill -CONT -- -{run.pid}; kill -- -{run.pid})", flush=True)
        touched: set[int] = set()
        try:
            while not (folder / "ready").exists():
                if run.poll() is not None:
                    raise RuntimeError(f"the idle Ray Train run exited ({run.returncode}) before its train function:"
                                       f"\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            time.sleep(3)  # the controller's and the worker group's start-up done
            rates = census(_descendants(run.pid))
            times, cores = timed_segments(step_on, batches, run.pid, touched, states)
            if run.poll() is not None:  # its running (and demoted) segments would have measured nothing
                raise RuntimeError(f"the idle Ray Train run ended during the measurement:\n{log.read_text()[-3000:]}")
        finally:
            _clean_up(run, folder, touched, restore_class=args.idle_class)
    _report(args.config, rates, times, cores)


def _clean_up(run: subprocess.Popen, folder: Path, touched: set[int], restore_class: bool) -> None:
    """Thaw and restore every process the benchmark touched, then end the idle run; a second SIGTERM or SIGHUP
    cannot cut this short."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    (folder / "keep").unlink(missing_ok=True)
    everyone = sorted(touched | set(_descendants(run.pid)))
    _signal_all(everyone, signal.SIGCONT)
    try:
        refused = _set_class(everyone, os.SCHED_OTHER, best_effort=True) if restore_class else 0
        if refused:
            print(f"warning: {refused} threads of the idle run stayed at SCHED_IDLE (they end with it)", flush=True)
    finally:
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def _report(config: str, rates: list[tuple[float, str]], times: dict[str, list[float]],
            cores: dict[str, list[float]]) -> None:
    step = {state: statistics.mean(values) for state, values in times.items()}
    print(f"{Path(config).relative_to(REPO) if Path(config).is_relative_to(REPO) else config}: the training step "
          f"in this process on pre-loaded batches, {SEGMENTS} x {len(times)} segments of "
          f"{SEGMENT_STEPS - SETTLE_STEPS} timed steps, alternating")
    print(f"  an idle one-worker Ray Train run's {len(rates)} processes ({sum(r for r, _ in rates):.0f} wake-ups/s "
          "between them), and their CPU in cores:")
    labels = {RUNNING: "running", IDLE_CLASS: "running, every thread at SCHED_IDLE", FROZEN: "frozen (SIGSTOP)"}
    for state in times:
        print(f"    {labels[state]:<38} {step[state]:.3f} s/step   {statistics.mean(cores[state]):.3f} cores")
    for state in (s for s in times if s != FROZEN):
        pairs = [a / b for a, b in zip(times[state], times[FROZEN], strict=True)]
        what = "Ray's standing processes" + (" at SCHED_IDLE" if state == IDLE_CLASS else "")
        print(f"{what} / none: {step[state] / step[FROZEN]:.2f} (segment pairs {min(pairs):.2f}-{max(pairs):.2f})")
    print("wake-ups a second, by process:")
    for rate, name in rates:
        if rate >= 1:
            print(f"  {rate:7.0f}  {name}")


if __name__ == "__main__":
    main()
