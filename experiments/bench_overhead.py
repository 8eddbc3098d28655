"""What Ray costs a short pretraining: ``oskar pretrain`` vs ``oskar pretrain --local``, whole commands.

Runbook::

    python experiments/bench_train.py --overhead                 # tiny recipe, 40 steps, built-in benchmark
    python experiments/bench_train.py --overhead --steps 100 --set train.threads=1

Runs both as subprocesses, one after the other, on the same config and dataset (the built-in benchmark in
``data/``, synthesised on first use), each with its own SQLite MLflow store in a temporary directory, and
times them from launch to exit (start-up, MLflow logging, artifacts included). Each run logs where its time
went (``time/<stage>_s``, oskar_ray/train/timeline.py); the table puts the stages side by side, and
"process" is what the stages do not cover (interpreter start, imports, config, exit). Both do the same work:
the same steps on the same data, the same health check (RankMe on the held-out batch) at the same steps, the
config, loss curve and weights logged to MLflow.

A third command times Ray's own floor the same way: the same driver start (``init_ray``, the project's runtime
environment) and a one-worker ``TorchTrainer`` of the same size whose train function reports once and returns
— what any one-worker Ray Train run costs on this machine before it does any work (``--ray-floor`` runs it
alone). Added to the single-process run's own work (model, health batch, data, steps, artifacts), it is the least
a Ray Train run can take on this machine, printed as a ratio beside the goal.

Goal (issue 29): Ray / single process <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the stages of either command, in the order they happen
STAGES = ["resolve_data", "ray_init", "tracking", "datasets", "worker_start", "model", "monitor", "data", "first_batch",
          "first_step", "steps", "wind_down", "artifacts"]
#: what the single-process run does besides starting, tracking and exiting, which any Ray Train run does too
WORK_STAGES = ["model", "monitor", "data", "steps", "artifacts"]


def run(local: bool, config: str, overrides: list[str], workdir: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of one whole command and its logged stages."""
    from mlflow.tracking import MlflowClient

    name = "local" if local else "ray"
    uri = f"sqlite:///{workdir / f'{name}.db'}"
    command = [sys.executable, "-m", "oskar_ray.cli", "pretrain", *(["--local"] if local else []),
               "--config", config, "--set", f"train.output_dir={workdir / name}", "--set", f"tracking.uri={uri}",
               "--set", f"tracking.run_name={name}", *[a for o in overrides for a in ("--set", o)]]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - started
    if out.returncode:
        sys.exit(f"{name} run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = runs[0].data.metrics
    return wall, {k[len("time/"):-len("_s")]: v for k, v in metrics.items() if k.startswith("time/")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--ray-floor", action="store_true", help="run the no-op Ray Train command only")
    args = parser.parse_args(argv)
    overrides = [f"train.steps={args.steps}", *args.overrides]
    if args.ray_floor:
        noop_run(args.config, overrides)
        return
    os.chdir(REPO)  # the built-in benchmark lives in the repository's data/
    ensure_dataset(args.config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        local_wall, local = run(True, args.config, overrides, Path(tmp))
        ray_wall, ray = run(False, args.config, overrides, Path(tmp))
        floor_wall = ray_floor(args.config, overrides, Path(tmp))
    print(f"{args.config}, {args.steps} steps, whole commands (seconds)")
    print(f"  {'stage':<14}{'--local':>10}{'Ray Train':>12}")
    for stage in ["process", *STAGES]:
        if stage == "process":
            a, b = local_wall - sum(local.values()), ray_wall - sum(ray.values())
        else:
            a, b = local.get(stage), ray.get(stage)
        if a is not None or b is not None:
            print(f"  {stage:<14}{_cell(a):>10}{_cell(b):>12}")
    print(f"  {'total':<14}{local_wall:>10.1f}{ray_wall:>12.1f}")
    print(f"Ray Train / single process: {ray_wall / local_wall:.2f} (goal <= 1.5)")
    print(f"Ray's floor, a no-op one-worker Ray Train run: {floor_wall:.1f} s = {floor_wall / local_wall:.2f} x the "
          f"whole single-process run")
    # the floor already holds a process start and exit; the tracking overlaps Ray's start (ray_trainer.py)
    work = sum(local.get(stage, 0.0) for stage in WORK_STAGES)
    print(f"  + the single-process run's own work ({'+'.join(WORK_STAGES)}: {work:.1f} s) = {floor_wall + work:.1f} s: "
          f"the least Ray Train can take here, {(floor_wall + work) / local_wall:.2f} x")


def ray_floor(config: str, overrides: list[str], workdir: Path) -> float:
    """Wall seconds of a whole no-op Ray Train command (:func:`noop_run` in a fresh interpreter)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--ray-floor", "--config", config,
               *[a for o in overrides for a in ("--set", o)], "--set", f"train.output_dir={workdir / 'floor'}"]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - started
    if out.returncode:
        sys.exit(f"no-op Ray Train run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall


def noop_run(config: str, overrides: list[str]) -> None:
    """What ``oskar pretrain`` asks of Ray, without the work: its Ray start and a one-worker CPU ``TorchTrainer``
    (the config's CPUs per worker, storage under ``train.output_dir``) whose worker reports once: the floor of
    the one-worker CPU runs this benchmark compares (not of multi-worker or GPU runs)."""
    sys.path.insert(0, str(REPO))
    import ray.train
    from ray.train.torch import TorchTrainer

    from oskar_ray.config import load_config
    from oskar_ray.ray_runtime import init_ray

    cfg = load_config(str(REPO / config), overrides)
    init_ray()
    trainer = TorchTrainer(
        _report_once,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="floor", storage_path=str(Path(cfg.train.output_dir).resolve())))
    trainer.fit()


def _report_once() -> None:
    import ray.train

    ray.train.report({"done": 1})


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ensure_dataset(config: str, overrides: list[str]) -> None:
    """Synthesise the built-in benchmark before timing (no timed command should pay for it)."""
    sys.path.insert(0, str(REPO))
    from oskar_ray.config import load_config
    from oskar_ray.data.resolve import resolve_data

    resolve_data(load_config(str(REPO / config), overrides))


if __name__ == "__main__":
    main()
