"""The trainer's step with Ray Data streaming beside it vs the same step on batches already in memory.

Runbook::

    python experiments/bench_data.py --stream                   # tiny recipe, 120 steps, built-in benchmark
    python experiments/bench_data.py --stream --set data.max_memory_mb=1024 --set data.max_cpus=0

Two measurements of the tiny recipe's training step, side by side in one run, on the same split of the
built-in benchmark (synthesised into ``data/`` if absent):

* streaming: ``oskar pretrain`` machinery (Ray Train, one worker, Ray Data reading and preprocessing the split
  under the run's data budget: ``data.max_cpus``, ``data.max_memory_mb`` / the default window,
  ``data.max_tasks``); the step time is the worker's logged ``samples_per_s`` (data wait included) after the
  first ``--skip`` steps, averaged as step time;
* pre-loaded: the same model step (``train_step``, same threads) in this process on batches of the same split
  read and preprocessed before the clock starts;
* pre-loaded in a Ray Train worker: the same, inside a one-worker ``TorchTrainer`` (no Ray Data): what the Ray
  worker itself costs the step (its niceness, thread settings, the training thread), apart from the stream.

Goal (issue 29): streaming / pre-loaded <= 1.1. The third line splits a miss: a worker that matches the plain
process puts the difference on the stream running beside the trainer (docs/results.md, "Ray's overhead").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def streaming_step_s(cfg, skip: int, workdir: Path) -> tuple[float, dict]:
    from oskar_ray.tracking import client_for
    from oskar_ray.train.ray_trainer import pretrain

    cfg.train.output_dir, cfg.tracking.uri = str(workdir / "runs"), f"sqlite:///{workdir / 'stream.db'}"
    result = pretrain(cfg, run_name="stream")
    client = client_for(cfg.tracking.uri)
    windows = [m.value for m in client.get_metric_history(result.run_id, "samples_per_s") if m.step > skip]
    waits = [m.value for m in client.get_metric_history(result.run_id, "data_wait_fraction") if m.step > skip]
    step_s = statistics.mean(cfg.train.batch_size / w for w in windows)
    return step_s, {"data_wait": statistics.mean(waits)}


def preloaded_step_s(cfg, skip: int) -> float:
    import torch

    from oskar_ray.data.pipeline import iterate_local
    from oskar_ray.model import Oskar
    from oskar_ray.train import build_optimizer, train_step
    from oskar_ray.train.step import seed_everything

    seed_everything(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)  # what the Ray worker gives torch
    batches = iterate_local(cfg.data.path, cfg.data.train_split, cfg, cfg.train.batch_size, seed=1, train=True,
                            drop_last=True)
    loaded = [next(batches) for _ in range(cfg.train.steps)]
    model = Oskar(cfg)
    optimizer = build_optimizer(model, cfg)
    for step, batch in enumerate(loaded[:skip]):
        train_step(model, optimizer, batch, step, cfg)
    started = time.perf_counter()
    for step, batch in enumerate(loaded[skip:], start=skip):
        train_step(model, optimizer, batch, step, cfg)
    return (time.perf_counter() - started) / (cfg.train.steps - skip)


def _preloaded_in_worker(config: dict) -> None:
    from oskar_ray.config import config_from_dict

    os.chdir(REPO)  # a Ray worker starts elsewhere; the built-in benchmark's path is relative to the repository
    # Ray Train V2 hands back the metrics of checkpointed reports only: the step time travels in a file
    step_s = preloaded_step_s(config_from_dict(config["cfg"]), config["skip"])
    Path(config["out"]).write_text(str(step_s))


def preloaded_in_ray_worker_step_s(cfg, skip: int, workdir: Path) -> float:
    """The pre-loaded step inside a one-worker Ray Train run (same CPUs per worker, no Ray Data)."""
    import sys

    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    from oskar_ray.ray_runtime import init_ray

    init_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import experiments/
    trainer = TorchTrainer(
        _preloaded_in_worker, train_loop_config={"cfg": cfg.to_dict(), "skip": skip, "out": str(workdir / "step_s")},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="preloaded", storage_path=str(workdir / "ray")))
    trainer.fit()
    return float((workdir / "step_s").read_text())


def main(argv: list[str] | None = None) -> None:
    from oskar_ray.config import load_config
    from oskar_ray.data.resolve import resolve_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out (a multiple of log_every)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    cfg = resolve_data(load_config(args.config, [f"train.steps={args.steps}", "train.log_every=10",
                                                 f"train.checkpoint_every={args.steps}", *args.overrides]))
    preloaded = preloaded_step_s(cfg, args.skip)
    with tempfile.TemporaryDirectory() as tmp:
        streaming, extra = streaming_step_s(cfg, args.skip, Path(tmp))
        in_worker = preloaded_in_ray_worker_step_s(cfg, args.skip, Path(tmp))
    print(f"{args.config}: training step after {args.skip} warm-up steps, {args.steps - args.skip} timed, batch "
          f"{cfg.train.batch_size}")
    print(f"  pre-loaded batches (this process):           {preloaded:.3f} s/step")
    print(f"  Ray Train + Ray Data streaming (data budget): {streaming:.3f} s/step "
          f"(data wait {extra['data_wait']:.1%})")
    print(f"  pre-loaded batches in a Ray Train worker:     {in_worker:.3f} s/step")
    print(f"streaming / pre-loaded: {streaming / preloaded:.2f} (goal <= 1.1); "
          f"Ray worker, pre-loaded / this process: {in_worker / preloaded:.2f}; "
          f"streaming / pre-loaded, both in a Ray Train worker (the stream alone): {streaming / in_worker:.2f}")


if __name__ == "__main__":
    main()
