"""``oskar`` — the command line.

    oskar data synth  --out DIR [--samples N --seed S]          # built-in benchmark
    oskar data ingest --out DIR --split NAME --videos DIR ...   # your own data
    oskar pretrain    --config FILE [--set key=value ...]       # OSKAR pretraining

``pretrain`` currently runs the single-process loop (the Ray Train launcher
replaces it when it lands); it prints one line per ``train.log_every`` steps
and writes ``weights.safetensors`` + the resolved ``config.yaml`` to
``train.output_dir/<run name>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import OskarConfig, load_config, save_config


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. experiments/configs/tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="dotted override, repeatable (e.g. --set budget.input_tokens=48)")


def _pretrain(args: argparse.Namespace) -> int:
    from .train.run import run_single_process  # torch import only when needed

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.output_dir) / (cfg.tracking.run_name or time.strftime("pretrain-%Y%m%d-%H%M%S"))
    save_config(cfg, run_dir / "config.yaml")
    run_single_process(cfg, run_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oskar", description="OSKAR-Ray: multimodal latent-prediction pretraining")
    commands = parser.add_subparsers(dest="command", required=True)
    try:
        from .data.cli import add_data_commands
    except ImportError:  # the data package is optional until it lands
        add_data_commands = None
    if add_data_commands is not None:
        add_data_commands(commands)
    pretrain = commands.add_parser("pretrain", help="pretrain OSKAR from a config")
    _add_config_args(pretrain)
    pretrain.set_defaults(func=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"oskar {args.command}: error: {err}", file=sys.stderr)
        return 2


def config_summary(cfg: OskarConfig) -> str:
    b = cfg.budget
    return (f"D={cfg.model.dim} depth={cfg.model.depth} modalities={'+'.join(cfg.enabled_modalities)} "
            f"budget {b.input_tokens} in / {b.target_tokens} out, {cfg.train.steps} steps "
            f"x batch {cfg.train.batch_size}")


if __name__ == "__main__":
    sys.exit(main())
