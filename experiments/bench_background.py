"""What an idle Ray Train run's processes cost a training step on this machine (Linux).

Runbook::

    python experiments/bench_background.py                      # tiny recipe, 4 x 2 segments of 25 steps
    python experiments/bench_background.py --set train.threads=1

An idle one-worker Ray Train run, started as ``oskar pretrain`` starts one (``start_ray``: the local cluster,
its environment; then the controller, its actors and the worker group, whose train function sleeps), runs in a
subprocess. This process times the run's model step (``train_step``, the run's threads) on batches read before
the clock, in alternating segments (ABBA, against the machine's drift): the idle run's processes running, and
the same processes frozen with SIGSTOP, which stops them without ending them. It prints the wake-ups a second of
each of those processes (context switches, ``/proc``) and the ratio of the two step times: what Ray's standing
processes cost a trainer that has every core, before any data moves (the step inside ``oskar pretrain`` pays
this on top of its stream; ``experiments/bench_stream.py`` measures the stream, docs/results.md the rest).
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
# segments as bench_stream.py times them (pairs, steps each, steps left out after a switch: thawed processes catch up)
from bench_stream import SEGMENT_STEPS, SEGMENTS, SETTLE_STEPS, abba, preloaded_batches, warmed_up_step  # noqa: E402

#: steps trained before the first segment (allocator, thread pool, autograd caches)
WARM_UP_STEPS = 3
#: seconds over which the idle run's wake-ups are counted
CENSUS_S = 5.0


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
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            status = (task / "status").read_text()
            total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    except OSError:  # the process (or a thread) ended meanwhile: Ray ends idle pooled workers after a second
        return -1
    return total


def census(pids: list[int]) -> list[tuple[float, str]]:
    """Wake-ups a second of each process over :data:`CENSUS_S` (while this process sleeps); processes that
    ended meanwhile are left out."""
    before = {pid: _context_switches(pid) for pid in pids}
    time.sleep(CENSUS_S)
    after = {pid: _context_switches(pid) for pid in before}
    rates = [((after[pid] - n) / CENSUS_S, _name(pid)) for pid, n in before.items() if n >= 0 and after[pid] >= 0]
    return sorted(rates, reverse=True)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def timed_segments(step_on, batches: list, run_pid: int, stopped: set[int]) -> dict[str, list[float]]:
    """Mean step seconds per segment, with the idle run's processes running and frozen, ABBA. ``stopped``
    collects every pid ever frozen (thawed again on the way out, even if no longer the run's descendant)."""
    times: dict[str, list[float]] = {"running": [], "frozen": []}
    step = WARM_UP_STEPS
    for state in abba(("running", "frozen")):
        pids = _descendants(run_pid) if state == "frozen" else []
        stopped.update(pids)
        _signal_all(pids, signal.SIGSTOP)
        try:
            steps = []
            for k in range(SEGMENT_STEPS):
                started = time.perf_counter()
                step_on(batches[k], step)
                step += 1
                if k >= SETTLE_STEPS:
                    steps.append(time.perf_counter() - started)
        finally:
            _signal_all(pids, signal.SIGCONT)
        times[state].append(statistics.mean(steps))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments/configs/tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--idle-run", metavar="FOLDER", help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
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
    cfg.train.steps = WARM_UP_STEPS + 2 * SEGMENTS * SEGMENT_STEPS  # every timed step inside the run's schedule
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
        stopped: set[int] = set()
        try:
            while not (folder / "ready").exists():
                if run.poll() is not None:
                    raise RuntimeError(f"the idle Ray Train run exited ({run.returncode}) before its train function:"
                                       f"\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            time.sleep(3)  # the controller's and the worker group's start-up done
            rates = census(_descendants(run.pid))
            times = timed_segments(step_on, batches, run.pid, stopped)
            if run.poll() is not None:  # its "running" segments would have measured nothing
                raise RuntimeError(f"the idle Ray Train run ended during the measurement:\n{log.read_text()[-3000:]}")
        finally:
            (folder / "keep").unlink(missing_ok=True)
            _signal_all(sorted(stopped | set(_descendants(run.pid))), signal.SIGCONT)
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    _report(args.config, rates, times)


def _report(config: str, rates: list[tuple[float, str]], times: dict[str, list[float]]) -> None:
    running, frozen = statistics.mean(times["running"]), statistics.mean(times["frozen"])
    pairs = [a / b for a, b in zip(times["running"], times["frozen"], strict=True)]
    print(f"{Path(config).relative_to(REPO) if Path(config).is_relative_to(REPO) else config}: the training step "
          f"in this process on pre-loaded batches, {SEGMENTS} x 2 segments of {SEGMENT_STEPS - SETTLE_STEPS} timed "
          f"steps, alternating")
    print(f"  an idle one-worker Ray Train run's {len(rates)} processes running: {running:.3f} s/step "
          f"({sum(r for r, _ in rates):.0f} wake-ups/s between them)")
    print(f"  the same processes frozen (SIGSTOP):                 {frozen:.3f} s/step")
    print(f"Ray's standing processes / none: {running / frozen:.2f} (segment pairs {min(pairs):.2f}-{max(pairs):.2f})")
    print("wake-ups a second, by process:")
    for rate, name in rates:
        if rate >= 1:
            print(f"  {rate:7.0f}  {name}")


if __name__ == "__main__":
    main()
