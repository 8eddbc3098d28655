"""``oskar eval``: the downstream suite on a checkpoint.

Runbook::

    oskar eval --checkpoint runs/<name>/checkpoint_000002                      # eval.tasks of its config
    oskar eval --checkpoint CKPT --tasks action,retrieval --data data/synth
    oskar eval --checkpoint CKPT --baseline video_only                        # same protocol, video-only pretraining
    oskar eval --checkpoint weights.safetensors --config experiments/configs/tiny.yaml --set eval.probe_epochs=10
    python -m oskar_ray.eval.cli --checkpoint CKPT                            # without the main CLI

Prints one line per task and a final table; metrics go to MLflow as
``eval/<task>/<metric>`` (see :mod:`oskar_ray.eval.api`), ``--out DIR`` keeps
``summary.json`` and the PNGs locally too.
"""

from __future__ import annotations

import argparse
import sys


def add_eval_commands(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="downstream evaluation of a checkpoint (probes, retrieval, QA, ...)")
    _add_arguments(parser)
    parser.set_defaults(func=run_eval)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from .api import TASKS

    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or weights file")
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} "
                                                      "(default: eval.tasks of the config)")
    parser.add_argument("--config", default=None, help="config YAML (default: the checkpoint's config.yaml)")
    parser.add_argument("--data", default=None, help="dataset directory (default: data.path of the config)")
    parser.add_argument("--baseline", choices=["random", "video_only"], default=None,
                        help="evaluate a baseline on the same protocol instead of the checkpoint's weights")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="dotted config override, repeatable (e.g. --set eval.probe_epochs=10)")
    parser.add_argument("--out", default=None, help="also write summary.json and PNGs here")
    parser.add_argument("--cache", default=None, help="directory caching features and baseline weights")
    parser.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_eval(args: argparse.Namespace) -> int:

    from ..config import load_config
    from .api import evaluate_full

    cfg = None
    if args.config or args.overrides:
        base = args.config or _checkpoint_config(args.checkpoint)
        cfg = load_config(base, args.overrides)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    result = evaluate_full(args.checkpoint, args.data, tasks, cfg, baseline=args.baseline, log=not args.no_log,
                           out_dir=args.out, progress=not args.quiet, cache_dir=args.cache)
    width = max((len(k) for k in result.metrics), default=10)
    for key, value in sorted(result.metrics.items()):
        print(f"{key:<{width}}  {value:.4f}")
    if result.run_id:
        print(f"logged to MLflow run {result.run_id}")
    print("tasks: " + "  ".join(f"{task} {'FAILED' if task in result.errors else 'ok'} ({sec:.0f} s)"
                                for task, sec in result.seconds.items()))
    for task, error in result.errors.items():
        print(f"eval {task} failed: {error}", file=sys.stderr)
    return 1 if result.errors else 0


def _checkpoint_config(location: str) -> str:
    """The config.yaml beside a checkpoint (a directory or weights file, local or a URI), as a local file."""
    from .. import storage

    directory = location if storage.is_dir(location) else storage.parent(location)
    config = storage.join(directory, "config.yaml")
    if not storage.is_file(config):
        raise FileNotFoundError(f"{config}: missing; pass --config FILE")
    return storage.local_file(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oskar eval", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
