"""``oskar sweep SPEC.yaml [flags]``: run or resume the Ray Tune sweep a spec describes.

::

    oskar sweep experiments/configs/sweeps/token_budget.yaml            # = python experiments/sweep_token_budget.py
    oskar sweep experiments/configs/sweeps/mask_ratio.yaml --smoke
    oskar sweep experiments/configs/sweeps/predictor.yaml --profile per_modality --resume

Flags (``experiments/sweep_token_budget.py``, the entry point users know, takes the same):

    --smoke                 the YAML's `smoke` profile: 2 short trials, minutes
    --profile NAME          another profile of the YAML (e.g. gpu)
    --num-samples N         repeats of the grid (random axes: draws)
    --max-concurrent N      at most N trials at once (default: what the cluster's resources allow)
    --resume [DIR]          finish an interrupted sweep (default: the newest one of this sweep)
    --set KEY=VALUE         config override for every trial (repeatable)
    --grid KEY=V1,V2,...    replace or add a grid axis (repeatable)
    --experiment NAME       MLflow experiment (default oskar-sweep-<name>)
    --scheduler asha|sha|fifo   asynchronous / synchronous successive halving; fifo: no early stopping
    --storage-path DIR      where Tune and Ray Train write (default runs/sweeps)
    --no-report             skip the HTML report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .spec import edit_spec, load_spec


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_sweep_flags(p)


def add_sweep_commands(commands) -> None:
    """The ``sweep`` subcommand of ``oskar`` (oskar_ray/cli.py)."""
    p = commands.add_parser("sweep", help="run or resume a Ray Tune sweep (each trial pretrained + evaluated)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep YAML (experiments/configs/sweeps/*.yaml)")
    add_sweep_flags(p)
    p.set_defaults(func=lambda args: run_from_args(args.spec, args))


def add_sweep_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--smoke", action="store_true", help="the sweep's smoke profile: a couple of short trials")
    p.add_argument("--profile", default="", help="a profile of the sweep YAML (e.g. gpu)")
    p.add_argument("--num-samples", type=int, help="repeats of the grid / random draws")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                   help="resume an interrupted sweep (default: the newest of this sweep)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override for every trial, repeatable")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis, repeatable")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--scheduler", choices=["asha", "sha", "fifo"],
                   help="asha: asynchronous early stopping; sha: synchronous (trials pause at each rung); fifo: none")
    p.add_argument("--storage-path", help="Tune/Ray Train output root (default runs/sweeps)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


def sweep_main(sweep_yaml: str | Path, argv: list[str] | None = None, description: str = "") -> int:
    """Parse the common flags, run (or resume) the sweep described by ``sweep_yaml``; exit code."""
    return run_from_args(sweep_yaml, build_parser(description).parse_args(argv))


def run_from_args(sweep_yaml: str | Path, args: argparse.Namespace) -> int:
    if args.smoke and args.profile:
        print("sweep: error: --smoke and --profile are exclusive", file=sys.stderr)
        return 2
    from .watchdog import SweepStalled

    try:
        from .runner import run_sweep

        spec = load_spec(sweep_yaml, profile="smoke" if args.smoke else args.profile)
        spec = edit_spec(spec, overrides=args.overrides, grid=args.grid, num_samples=args.num_samples,
                         max_concurrent=args.max_concurrent, experiment=args.experiment,
                         storage_path=args.storage_path, scheduler_kind=args.scheduler)
        outcome = run_sweep(spec, resume=args.resume, report=not args.no_report)
    except (ValueError, FileNotFoundError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    except SweepStalled as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 1
    finally:
        _shutdown_ray()
    return 0 if outcome.best is not None or not outcome.trials else 1


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
