"""The trainer's step with Ray Data streaming beside it vs the same step on batches already in memory.

Runbook::

    python experiments/bench_data.py --stream                   # tiny recipe, 120 steps, built-in benchmark
    python experiments/bench_data.py --stream --set data.max_memory_mb=1024 --set data.max_cpus=0
    python experiments/bench_data.py --stream --one-thread      # + both again with one torch thread, interleaved

Measurements of the tiny recipe's training step, side by side in one run, on the same split of the built-in
benchmark (synthesised into ``data/`` if absent):

* ``oskar pretrain`` streaming: the whole machinery (Ray Train, one worker, Ray Data reading and preprocessing
  the split under the run's data budget: ``data.max_cpus``, ``data.max_memory_mb`` / the default window,
  ``data.max_tasks``; health batch, logging, checkpoint); the step time is the worker's logged ``samples_per_s``
  (data wait included) after the first ``--skip`` steps, averaged as step time;
* pre-loaded in this process: the same model step (``train_step``, same threads) without Ray, on batches read
  and preprocessed before the clock;
* interleaved in one Ray Train worker reading the run's stream under the same budget: one model trains in
  alternating segments — steps on batches it took from the stream before the clock, and steps taking the
  stream's next batch — so both sides share the process, the model and the machine's hour (sequential runs here
  drift by more than the effect, ±10 %). The stream stays alive, backpressured, through the pre-loaded segments
  (Ray Data's executor and iterator threads idle in the worker), so this ratio is the marginal cost of producing
  batches: a lower bound on the stream's cost. ``--one-thread`` adds two more modes to the same segments, both
  with one torch thread (a core left to the data path): what leaving the data path a core gives the ratio, and
  what it costs the step.

Goal (issue 29 point 3): streaming / pre-loaded <= 1.1, the first line against the second. The interleaved
ratio and "the Ray Train worker alone" (its pre-loaded segments against this process) split a miss between the
stream's work and the Ray Train worker itself (docs/results.md, "Ray's overhead").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: interleaved measurement: segment pairs, steps per segment, and steps left out of each segment's timing
#: (after a streaming segment the stream refills its window of batches)
SEGMENTS, SEGMENT_STEPS, SETTLE_STEPS = 4, 25, 3
#: the interleaved modes: where the batch comes from, and "@1" for one torch thread (else the run's threads)
MODES, ONE_THREAD_MODES = ("pre-loaded", "streaming"), ("pre-loaded@1", "streaming@1")


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


def warmed_up_step(cfg, warm_up: list):
    """``step_on(batch, step)``: the run's model step (seeded model, its optimizer, the threads the run's worker
    gives torch), after training on the ``warm_up`` batches."""
    import torch

    from oskar_ray.model import Oskar
    from oskar_ray.train import build_optimizer, train_step
    from oskar_ray.train.step import seed_everything

    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    seed_everything(cfg.train.seed)
    model = Oskar(cfg)
    optimizer = build_optimizer(model, cfg)

    def step_on(batch, step: int) -> None:
        train_step(model, optimizer, batch, step, cfg)

    for step, batch in enumerate(warm_up):
        step_on(batch, step)
    return step_on


def preloaded_batches(cfg, count: int) -> list[dict]:
    """The first ``count`` training batches of the run's split, read and preprocessed in this process."""
    from oskar_ray.data.pipeline import iterate_local

    batches = iterate_local(cfg.data.path, cfg.data.train_split, cfg, cfg.train.batch_size, seed=1, train=True,
                            drop_last=True)
    return [next(batches) for _ in range(count)]


def abba(modes: tuple[str, ...]):
    """The modes of :data:`SEGMENTS` rounds of segments in ABBA order (ABCCBA for three; against the drift)."""
    for pair in range(SEGMENTS):
        yield from modes[::1 if pair % 2 == 0 else -1]


def preloaded_step_s(cfg, skip: int) -> float:
    loaded = preloaded_batches(cfg, cfg.train.steps)
    step_on = warmed_up_step(cfg, loaded[:skip])
    started = time.perf_counter()
    for step, batch in enumerate(loaded[skip:], start=skip):
        step_on(batch, step)
    return (time.perf_counter() - started) / (cfg.train.steps - skip)


def _interleaved_in_worker(config: dict) -> None:
    """One Ray Train worker, one model, the run's stream: segments of steps on batches it took from the stream
    before the clock and segments of steps taking the stream's next batch, alternating (ABBA, against drift)."""
    import json

    import ray.train

    from oskar_ray.config import config_from_dict
    from oskar_ray.data.pipeline import iter_train_batches

    os.chdir(REPO)  # a Ray worker starts elsewhere; the built-in benchmark's path is relative to the repository
    cfg, skip = config_from_dict(config["cfg"]), config["skip"]
    stream = iter_train_batches(ray.train.get_dataset_shard("train"), cfg, cfg.train.batch_size, train=True)
    loaded = [next(stream) for _ in range(SEGMENT_STEPS)]
    step_on = warmed_up_step(cfg, [loaded[step % SEGMENT_STEPS] for step in range(skip)])
    # Ray Train V2 hands back the metrics of checkpointed reports only: the times travel in a file
    Path(config["out"]).write_text(json.dumps(_timed_segments(step_on, stream, loaded, skip, config["modes"])))


def _timed_segments(step_on, stream, loaded: list, first_step: int, modes: tuple[str, ...]) -> list[dict]:
    """Per segment: its mode, the seconds of each timed step (data wait included) and of each wait for the
    stream's next batch."""
    import torch

    threads = torch.get_num_threads()
    segments, step = [], first_step
    for mode in abba(modes):
        torch.set_num_threads(1 if mode.endswith("@1") else threads)
        segment = {"mode": mode, "steps": [], "waits": []}
        for k in range(SEGMENT_STEPS):
            started = time.perf_counter()
            batch = next(stream) if mode.startswith("streaming") else loaded[k]
            waited = time.perf_counter() - started
            step_on(batch, step)
            step += 1
            if k >= SETTLE_STEPS:
                segment["steps"].append(time.perf_counter() - started)
                segment["waits"].append(waited)
        segments.append(segment)
    torch.set_num_threads(threads)
    return segments


def interleaved_steps(cfg, skip: int, workdir: Path, modes: tuple[str, ...] = MODES) -> list[dict]:
    """The timed segments (:func:`_timed_segments`) of one Ray Train worker reading the run's stream under the
    run's data budget (``start_ray``; one worker: the stream is not split). CPU configs only (no device sync)."""
    import json
    import sys

    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    from oskar_ray.config import config_from_dict
    from oskar_ray.train.ray_trainer import start_ray, training_stream

    # every timed step inside the run's schedule (EMA still moving) and its stream long enough for them all
    cfg = config_from_dict(cfg.to_dict())
    cfg.train.steps = skip + (len(modes) * SEGMENTS + 1) * SEGMENT_STEPS
    start_ray(cfg)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import experiments/
    out = workdir / "interleaved.json"
    trainer = TorchTrainer(
        _interleaved_in_worker, train_loop_config={"cfg": cfg.to_dict(), "skip": skip, "out": str(out), "modes": modes},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="interleaved", storage_path=str(workdir / "ray")),
        datasets={"train": training_stream(cfg)}, dataset_config=ray.train.DataConfig(datasets_to_split=[]))
    trainer.fit()
    return json.loads(out.read_text())


def _pair_ratios(segments: list[dict], suffix: str) -> list[float]:
    """streaming / pre-loaded of each adjacent segment pair (ABBA order puts the two sources of one thread setting
    side by side) whose modes end in ``suffix`` ("" the run's threads, "@1" one)."""
    ratios = []
    for a, b in zip(segments[::2], segments[1::2], strict=True):
        stream, loaded = (a, b) if a["mode"].startswith("streaming") else (b, a)
        if loaded["mode"] == f"pre-loaded{suffix}":
            ratios.append(statistics.mean(stream["steps"]) / statistics.mean(loaded["steps"]))
    return ratios


def _report_interleaved(segments: list[dict]) -> tuple[float, float]:
    """Print the interleaved measurement; (pre-loaded, streaming) mean step seconds at the run's threads."""
    mean = {mode: statistics.mean(t for s in segments if s["mode"] == mode for t in s["steps"])
            for mode in {s["mode"] for s in segments}}
    pairs = _pair_ratios(segments, "")
    streamed = [s for s in segments if s["mode"] == "streaming"]
    wait = sum(sum(s["waits"]) for s in streamed) / sum(sum(s["steps"]) for s in streamed)
    print(f"  one Ray Train worker reading the run's stream, {SEGMENTS} segments of {SEGMENT_STEPS - SETTLE_STEPS} "
          f"timed steps each way, alternating:")
    print(f"    pre-loaded batches (the stream alive, backpressured): {mean['pre-loaded']:.3f} s/step")
    waits = ", ".join(f"{statistics.mean(s['waits']) * 1e3:.1f}" for s in streamed)
    print(f"    the stream's next batch:                    {mean['streaming']:.3f} s/step (data wait {wait:.1%}; "
          f"per segment: {waits} ms)")
    print(f"  the marginal cost of producing batches, streaming / pre-loaded in one worker: "
          f"{mean['streaming'] / mean['pre-loaded']:.2f} (segment pairs {min(pairs):.2f}-{max(pairs):.2f})")
    if "streaming@1" in mean:
        one = _pair_ratios(segments, "@1")
        print(f"  with one torch thread (a core left to the data path), the same segments: pre-loaded "
              f"{mean['pre-loaded@1']:.3f}, streaming {mean['streaming@1']:.3f} s/step = "
              f"{mean['streaming@1'] / mean['pre-loaded@1']:.2f} (segment pairs {min(one):.2f}-{max(one):.2f}); "
              f"its streaming step {mean['streaming@1'] / mean['streaming']:.2f} x the run's threads' streaming step")
    return mean["pre-loaded"], mean["streaming"]


def main(argv: list[str] | None = None) -> None:
    from oskar_ray.config import load_config
    from oskar_ray.data.resolve import resolve_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out (a multiple of log_every)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--one-thread", action="store_true",
                        help="interleave the same two modes with one torch thread too (~2.5 min more)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    cfg = resolve_data(load_config(args.config, [f"train.steps={args.steps}", "train.log_every=10",
                                                 f"train.checkpoint_every={args.steps}", *args.overrides]))
    preloaded = preloaded_step_s(cfg, args.skip)
    with tempfile.TemporaryDirectory() as tmp:
        streaming, extra = streaming_step_s(cfg, args.skip, Path(tmp))
        segments = interleaved_steps(cfg, args.skip, Path(tmp), MODES + ONE_THREAD_MODES if args.one_thread else MODES)
    print(f"{args.config}: training step after {args.skip} warm-up steps, {args.steps - args.skip} timed, batch "
          f"{cfg.train.batch_size}")
    print(f"  pre-loaded batches (this process):           {preloaded:.3f} s/step")
    print(f"  Ray Train + Ray Data streaming (data budget): {streaming:.3f} s/step "
          f"(data wait {extra['data_wait']:.1%})")
    in_worker, _ = _report_interleaved(segments)
    print(f"streaming / pre-loaded (oskar pretrain's worker / this process): {streaming / preloaded:.2f} "
          f"(goal <= 1.1); the Ray Train worker alone, pre-loaded / this process: {in_worker / preloaded:.2f}")


if __name__ == "__main__":
    main()
