"""``oskar`` — the command line.

    oskar data synth  --out DIR [--samples N --seed S]          # built-in benchmark
    oskar data ingest --out DIR --split NAME --videos DIR ...   # your own data
    oskar pretrain    --config FILE [--set key=value ...]       # OSKAR pretraining
    oskar eval        --checkpoint PATH [--tasks action,...]    # downstream evaluation
    oskar sweep       SPEC.yaml [--smoke|--profile P] [--resume]  # Ray Tune sweep, each trial pretrained + evaluated
    oskar report      --experiment NAME --out DIR               # sweep comparison page (HTML + PNGs)

``pretrain`` runs Ray Train on the local Ray cluster (or ``$RAY_ADDRESS``),
synthesising the built-in benchmark into ``data/`` when ``data.path`` is
empty; it prints one line per ``train.log_every`` steps, writes checkpoints
under ``train.output_dir/<run name>/`` and one MLflow run
(``mlflow ui --backend-store-uri sqlite:///mlflow.db``). ``--resume DIR``
continues a run; ``--local`` makes the same run in one process without Ray (same data, MLflow run).
``report`` builds ``DIR/report.html`` from a sweep's MLflow runs (see
:mod:`oskar_ray.report`).
"""

from __future__ import annotations

import argparse
import sys

from .config import OskarConfig, load_config
from .data.cli import add_data_commands
from .eval.cli import add_eval_commands
from .report.cli import add_report_commands
from .tune.cli import add_sweep_commands


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="experiment YAML (e.g. experiments/configs/tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="dotted override, repeatable (e.g. --set budget.input_tokens=48)")


def _pretrain(args: argparse.Namespace) -> int:
    if not (args.config or args.resume):
        raise ValueError("--config FILE is required (or --resume CHECKPOINT_DIR)")
    if args.resume and args.local:
        raise ValueError("--resume continues a Ray Train checkpoint; --local trains a fresh model in one process "
                         "without Ray: use one or the other")
    changes: dict = {}
    if args.resume:
        from .train.resume import describe, resume_config

        cfg, changes = resume_config(args.resume, args.config, args.overrides)
        if changes:
            print(f"oskar pretrain: resuming with changes: {describe(changes)}", flush=True)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.local:
        from .train.single_process import pretrain_local  # torch import only when needed

        print(f"oskar pretrain --local: {config_summary(cfg)}", flush=True)
        run_id, run_dir = pretrain_local(cfg)
        print(f"done: MLflow run {run_id}; weights in {run_dir}", flush=True)
        return 0
    from .train.ray_trainer import pretrain

    print(f"oskar pretrain: {config_summary(cfg)}", flush=True)
    result = pretrain(cfg, resume=args.resume, resume_changes=changes)
    print(f"done: MLflow run {result.run_id}; last checkpoint {result.checkpoint}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oskar", description="OSKAR-Ray: multimodal latent-prediction pretraining")
    commands = parser.add_subparsers(dest="command", required=True)
    add_data_commands(commands)
    pretrain = commands.add_parser("pretrain", help="pretrain OSKAR from a config (Ray Train)")
    _add_config_args(pretrain, required=False)
    pretrain.add_argument("--resume", metavar="CHECKPOINT_DIR",
                          help="continue from a checkpoint (its config is used when --config is omitted)")
    pretrain.add_argument("--local", action="store_true",
                          help="the same run in this one process, without Ray (debugging; what Ray costs)")
    pretrain.set_defaults(func=_pretrain)
    add_eval_commands(commands)
    add_sweep_commands(commands)
    add_report_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"oskar {args.command}: error: {err}", file=sys.stderr)
        return 2


def config_summary(cfg: OskarConfig) -> str:
    b = cfg.budget
    return (f"D={cfg.model.dim} depth={cfg.model.depth} modalities={'+'.join(cfg.enabled_modalities)} "
            f"budget {b.input_tokens} in / {b.target_tokens} out, {cfg.train.steps} steps "
            f"x batch {cfg.train.batch_size}")


if __name__ == "__main__":
    sys.exit(main())
