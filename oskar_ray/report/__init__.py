"""The sweep report: MLflow runs of one sweep → a self-contained HTML page + PNGs.

Runbook::

    oskar report --experiment NAME --out DIR [--tracking-uri URI] [--parent-run ID]

    from oskar_ray.report import build_report
    page = build_report("oskar-token-budget", "reports/tb", parent_run_id=parent_id)
    client.log_artifacts(parent_id, str(page.parent), artifact_path="report")   # end of a sweep

Modules: :mod:`.runs` (which runs, tidy frame), :mod:`.sweep_plots` (metric vs
swept params: lines, bars, heatmaps), :mod:`.curves` (loss/RankMe curves,
Pareto vs FLOPs), :mod:`.html` (page + sortable table), :mod:`.build` (the
whole), :mod:`.cli` (``oskar report``). Imports are lazy: the CLI parser does
not pull in matplotlib or MLflow.
"""

from __future__ import annotations

__all__ = ["build_report"]


def __getattr__(name: str):
    if name == "build_report":
        from .build import build_report

        return build_report
    raise AttributeError(name)
