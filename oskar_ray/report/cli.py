"""``oskar report``: the sweep comparison page from MLflow.

Runbook::

    oskar report --experiment oskar-token-budget --out reports/token-budget     # latest sweep of the experiment
    oskar report --experiment NAME --out DIR --parent-run <sweep parent run id>  # one given sweep
    oskar report --experiment NAME --out DIR --tracking-uri http://127.0.0.1:5000 --metric eval/vqa/accuracy
    python -m oskar_ray.report.cli --experiment NAME --out DIR                   # without the main CLI

Writes ``DIR/report.html`` (self-contained: open it in a browser, no server),
the PNGs beside it and ``trials.csv``; prints the page's path.
"""

from __future__ import annotations

import argparse
import sys


def add_report_commands(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help="HTML comparison report of a sweep's MLflow runs")
    _add_arguments(parser)
    parser.set_defaults(func=run_report)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (the sweep's --experiment)")
    parser.add_argument("--out", required=True, help="output directory for report.html, PNGs and trials.csv")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("--parent-run", default=None, metavar="RUN_ID",
                        help="sweep parent run id (default: the experiment's latest sweep)")
    parser.add_argument("--metric", default=None,
                        help="metric that ranks trials (default: first headline accuracy, e.g. action top-1)")


def run_report(args: argparse.Namespace) -> int:
    from .build import build_report

    page = build_report(args.experiment, args.out, tracking_uri=args.tracking_uri,
                        parent_run_id=args.parent_run, metric=args.metric)
    print(f"report: {page.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oskar report", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_report(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"oskar report: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
