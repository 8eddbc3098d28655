"""The number that matters: OSKAR vs random init vs video-only pretraining, same protocol.

Runbook::

    python experiments/eval_tiny.py --seeds 0,1,2 --tasks action,retrieval,vqa --baselines random
    #   the tiny recipe (experiments/configs/tiny.yaml: video, skeleton and captions, one checkpoint for action,
    #   retrieval and QA), three pretraining seeds, mean ± std beside random init
    #   (docs/results.md, "Downstream: the tiny recipe")
    python experiments/eval_tiny.py --set train.steps=100 --tasks action,retrieval      # a quick look
    python experiments/eval_tiny.py --config experiments/configs/tiny_pose.yaml --tasks action,health
    #   the recipe without captions (the best video probes before text was trained)
    mlflow ui --backend-store-uri sqlite:///mlflow.db                          # eval/* on the runs

1. resolves the built-in benchmark (``data/synthaction-...``, synthesised if missing);
2. pretrains OSKAR single-process with the shared train step (same loop as the
   video-only baseline, so both get identical steps, batch, LR and budgets — where video
   alone can fill them, see ``oskar_ray.eval.baselines``), writes a
   checkpoint and an MLflow run;
3. evaluates that checkpoint, then ``--baseline random`` and ``--baseline video_only``
   (child runs), and prints one comparison table; ``--out`` keeps JSON + PNGs.

With ``--seeds`` each seed is a separate pretraining (``train.seed``; the random-init
baseline draws its weights from the same seed) under ``--out/seed<N>``, and the table
shows mean ± std over seeds: one pretraining run moves the video probes by several
points, more than the difference between many recipes. Pretraining is bit-deterministic
for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from oskar_ray.config import load_config
from oskar_ray.data.language import QUESTION_TYPES
from oskar_ray.data.pipeline import iterate_local
from oskar_ray.data.resolve import resolve_data
from oskar_ray.eval.api import evaluate_full
from oskar_ray.model import Oskar
from oskar_ray.tracking import end_run, log_metrics, start_run
from oskar_ray.train import build_optimizer, seed_everything, train
from oskar_ray.train.checkpoint import TrainState, save_checkpoint

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
HEADLINE = ["eval/action/video/attentive/top1", "eval/action/video/linear/top1", "eval/action/video/knn/top1",
            "eval/action/skeleton/attentive/top1", "eval/action/skeleton/linear/top1",
            "eval/action/fusion/attentive/top1", "eval/action/fusion/linear/top1",
            *(f"eval/action/{v}/{p}/top1" for v in ("video", "skeleton", "fusion") for p in ("finetune", "supervised")),
            *(f"eval/lowshot/video/{p}/{pct}/top1" for p in ("linear", "attentive", "finetune", "supervised")
              for pct in ("1pct", "10pct")),
            "eval/retrieval/t2v/R1", "eval/retrieval/v2t/R1", "eval/retrieval/t2v/fact_R1",
            "eval/retrieval/v2t/fact_R1", "eval/retrieval/t2v/R1_ceiling", "eval/retrieval/v2t/R1_ceiling",
            "eval/retrieval/t2v/medR", "eval/retrieval/zeroshot/t2v/R1", "eval/retrieval/zeroshot/v2t/R1",
            "eval/retrieval/zeroshot/t2v/fact_R1", "eval/retrieval/zeroshot/t2v/medR",
            "eval/vqa/accuracy", *(f"eval/vqa/type/{t}/accuracy" for t in QUESTION_TYPES), "eval/vqa/prior",
            *(f"eval/vqa/type/{t}/prior" for t in QUESTION_TYPES), "eval/vqa/mc_accuracy",
            "eval/vqa/video+skeleton/accuracy",
            *(f"eval/vqa/video+skeleton/type/{t}/accuracy" for t in QUESTION_TYPES),
            "eval/robustness/all/attentive/top1",
            *(f"eval/robustness/no_{m}/attentive/top1" for m in ("video", "skeleton", "text")),
            "eval/localization/mAP_0.5", "eval/health/video/rankme"]


def pretrain_single_process(cfg, out: Path) -> Path:
    seed_everything(cfg.train.seed)
    client, run_id = start_run(cfg, run_name=f"eval-tiny-pretrain-{time.strftime('%H%M%S')}")
    model = Oskar(cfg)
    batches = iterate_local(cfg.data.path, cfg.data.train_split, cfg, cfg.train.batch_size, seed=cfg.train.seed,
                            train=True, epochs=10_000, drop_last=True)
    started = time.perf_counter()

    def on_step(step: int, metrics: dict) -> None:
        if (step + 1) % cfg.train.log_every == 0:
            log_metrics(client, run_id, {k: v for k, v in metrics.items() if k.startswith("loss")}, step + 1)
            print(f"step {step + 1}/{cfg.train.steps} loss {metrics['loss']:.4f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)

    train(cfg, batches, model=model, on_step=on_step)
    end_run(client, run_id)
    return save_checkpoint(out / "checkpoint", model, build_optimizer(model, cfg), cfg,
                           TrainState(cfg.train.steps, run_id))


def run_seed(cfg, out: Path, tasks: list[str], baselines: list[str]) -> dict[str, dict[str, float | None]]:
    """Pretrain one seed, evaluate it and the baselines: {"oskar"|baseline: {headline metric: value}}."""
    started = time.perf_counter()
    checkpoint = pretrain_single_process(cfg, out)
    print(f"seed {cfg.train.seed}: pretrained in {time.perf_counter() - started:.0f}s -> {checkpoint}", flush=True)
    results = {"oskar": evaluate_full(checkpoint, tasks=tasks, cfg=cfg, out_dir=out / "oskar", progress=False)}
    for kind in baselines:
        results[kind] = evaluate_full(checkpoint, tasks=tasks, cfg=cfg, baseline=kind, out_dir=out / kind,
                                      progress=False, cache_dir=out / "cache")
    return {name: {k: r.metrics.get(k) for k in HEADLINE} for name, r in results.items()}


def summarise(per_seed: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {metric: {"mean", "std", "min", "max"}}} over the seeds that produced the metric."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    names = dict.fromkeys(name for models in per_seed.values() for name in models)  # baselines may skip seeds
    for name in names:
        summary[name] = {}
        for key in HEADLINE:
            values = np.array([v for t in per_seed.values() if (v := t.get(name, {}).get(key)) is not None])
            if len(values):
                summary[name][key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if
                                      len(values) > 1 else 0.0, "min": float(values.min()),
                                      "max": float(values.max())}
    return summary


def print_table(summary: dict, per_seed: dict[int, dict]) -> None:
    seeds = list(per_seed)
    print(f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}")
    counts = {n: sum(n in models for models in per_seed.values()) for n in summary}  # baselines may skip seeds
    print(f"{'metric':<50}" + "".join(f"{f'{n} (n={counts[n]})':>16}" for n in summary))
    for key in HEADLINE:
        cells = [summary[n].get(key) for n in summary]
        print(f"{key:<50}" + "".join(f"{c['mean']:>9.3f} ±{c['std']:.3f}" if c else f"{'-':>16}" for c in cells))


def run_seeds(args, out: Path) -> dict[int, dict]:
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else [load_config(args.config, args.overrides).train.seed])
    tasks, baselines = args.tasks.split(","), list(filter(None, args.baselines.split(",")))
    with_baselines = {int(s) for s in args.baseline_seeds.split(",")} if args.baseline_seeds else set(seeds)
    if not with_baselines <= set(seeds):
        raise SystemExit(f"--baseline-seeds {sorted(with_baselines - set(seeds))} are not in --seeds {seeds}")
    per_seed = {}
    for seed in seeds:
        seeded = resolve_data(load_config(args.config, [*args.overrides, f"train.seed={seed}"]))
        per_seed[seed] = run_seed(seeded, out / f"seed{seed}" if len(seeds) > 1 else out, tasks,
                                  baselines if seed in with_baselines else [])
    return per_seed


def merged_seeds(dirs: list[Path], out: Path) -> dict[int, dict]:
    """{seed: {model: metrics}} from several runs' comparison.json; a seed in two runs is an error."""
    per_seed: dict[int, dict] = {}
    if out.resolve() in {d.resolve() for d in dirs}:
        raise SystemExit(f"--out {out} is one of the --merge folders: its comparison.json would be overwritten")
    for directory in dirs:
        path = directory / "comparison.json"
        if not path.is_file():
            raise SystemExit(f"--merge {directory}: no comparison.json there (not an eval_tiny --out folder?)")
        for seed, models in json.loads(path.read_text())["seeds"].items():
            if int(seed) in per_seed:
                raise SystemExit(f"--merge: seed {seed} appears twice ({path})")
            per_seed[int(seed)] = models
    return dict(sorted(per_seed.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(TINY), help="experiment YAML (default: the tiny config)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--tasks", default="action,retrieval,vqa,localization,health")
    parser.add_argument("--baselines", default="random,video_only")
    parser.add_argument("--seeds", default="", help="comma-separated train.seed values, each pretrained and "
                        "evaluated with its baselines; the table shows mean ± std (default: the config's seed)")
    parser.add_argument("--baseline-seeds", default="", help="comma-separated seeds whose baselines are "
                        "evaluated (each costs a full evaluation; default: every seed)")
    parser.add_argument("--out", default="runs/eval_tiny")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR", help="print one table from the "
                        "comparison.json of earlier runs (e.g. seeds run side by side) instead of running")
    args = parser.parse_args()
    out, started = Path(args.out), time.perf_counter()
    per_seed = merged_seeds([Path(d) for d in args.merge], out) if args.merge else run_seeds(args, out)
    summary = summarise(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"seeds": per_seed, "summary": summary}, indent=2))
    print_table(summary, per_seed)
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
