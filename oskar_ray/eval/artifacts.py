"""Evaluation artifacts: a JSON summary and one PNG per task, logged to MLflow.

Runbook::

    paths = write_artifacts(metrics, plots, out_dir)      # summary.json, action_confusion.png, ...
    run_id = log_eval(cfg, metrics, paths, run_id=...) # eval/<task>/<metric> + artifacts under eval/

PNGs: confusion matrix of the video attentive probe (action), the pooled
precision–recall curve at tIoU 0.5 (localization), Recall@K for K = 1..50 in
both directions (retrieval). Metrics go to the pretraining run when its id is
known and still exists, else to a new run (a child of ``parent_run_id`` if given).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARTIFACT_DIR = "eval"


def write_artifacts(metrics: dict[str, float], plots: dict[str, dict[str, Any]], out_dir: str | Path,
                 info: dict[str, Any] | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in sorted(metrics.items())}
    summary.write_text(json.dumps({"metrics": clean, **(info or {})}, indent=2))
    paths = [summary]
    drawers = {"action": _confusion, "localization": _pr_curve, "retrieval": _recall_curve,
               "lowshot": _label_efficiency}
    for task, data in plots.items():
        if task in drawers and data:
            try:
                paths.append(drawers[task](data, out / f"{task}.png"))
            except Exception as err:  # noqa: BLE001 - a figure must never lose the metrics computed before it
                log.exception("eval: the %s figure could not be drawn", task)
                print(f"eval {task}: figure not drawn ({type(err).__name__}: {err}); metrics kept", flush=True)
    return paths


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _confusion(data: dict[str, Any], path: Path) -> Path:
    plt = _figure()
    matrix, classes = data["confusion"]["matrix"].numpy(), data["confusion"]["classes"]
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"action: {data['confusion']['title']} (test)")
    fig.colorbar(image, ax=ax)
    return _save(fig, plt, path)


def _label_efficiency(data: dict[str, Any], path: Path) -> Path:
    """Top-1 against the share of training labels, a panel per view, a line per protocol, 95 % intervals."""
    plt = _figure()
    curve = data["curve"]
    fig, axes = plt.subplots(1, len(curve), figsize=(4.2 * len(curve), 3.6), squeeze=False, sharey=True)
    for ax, (view, protocols) in zip(axes[0], curve.items(), strict=True):
        for protocol, points in protocols.items():
            pct, top1, low, high = (list(col) for col in zip(*sorted(points), strict=True))
            # a Wilson end can sit a rounding error inside its point (1.0 -> 0.99999999): bars never negative
            errors = [[max(0.0, t - lo) for t, lo in zip(top1, low, strict=True)],
                      [max(0.0, h - t) for t, h in zip(top1, high, strict=True)]]
            ax.errorbar(pct, top1, yerr=errors, marker="o", capsize=3, label=protocol)
        ax.set_xscale("log")
        percents = sorted({pct for points in protocols.values() for pct, *_ in points})
        ax.set_xticks(percents, [f"{pct:g} %" for pct in percents])
        ax.set(title=view, xlabel="training labels used", ylim=(0, 1.02))
    axes[0][0].set_ylabel("action top-1 (test, 95 % CI)")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, plt, path)


def _pr_curve(data: dict[str, Any], path: Path) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(data["pr"]["recall"], data["pr"]["precision"])
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"localization PR, all classes, tIoU {data['pr']['tiou']}")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def _recall_curve(data: dict[str, Any], path: Path) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, curve in data["recall"].items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set(xlabel="K", ylabel="Recall@K (%)", title="video–text retrieval (test)", xscale="log", ylim=(0, 101))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_eval(cfg, metrics: dict[str, float], artifacts: list[Path], *, run_id: str = "",
             parent_run_id: str = "", run_name: str = "eval", tags: dict[str, str] | None = None,
             step: int = 0) -> str:
    """Log metrics (NaN skipped) and artifacts; returns the run id used."""
    from ..tracking import client_for, end_run, log_metrics, set_tags, start_run, tracking_uri

    client = client_for(tracking_uri(cfg))
    own_run = not (run_id and _exists(client, run_id))
    if own_run:
        client, run_id = start_run(cfg, run_name=run_name, parent_run_id=parent_run_id or None,
                                   extra_tags={"oskar.kind": "eval"})
    finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
    log_metrics(client, run_id, finite, step=step)
    set_tags(client, run_id, {"eval.finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(tags or {})})
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
    if own_run:
        end_run(client, run_id)
    return run_id


def _exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # MlflowException for an unknown id
        return False
    return True

