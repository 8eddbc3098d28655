"""Label efficiency: every action protocol at 1 % / 10 % / 100 % of the training labels, per view.

Runbook::

    result = run_lowshot(ctx)
    result.metrics["video/linear/10pct/top1"]        # logged as eval/lowshot/video/linear/10pct/top1
    result.metrics["video/supervised/10pct/top1"]    # the same network trained from scratch on those labels
    result.intervals["video/linear/10pct/top1"]      # its Wilson 95 % interval (also logged)
    result.plots["curve"]                            # the label-efficiency figure (lowshot_curve.png)

Each fraction of ``eval.lowshot_percents`` is a logical split ``train_<p>pct``
(100 % is ``train`` itself): a stored split of that name (``oskar data synth`` writes ``train_1pct`` /
``train_10pct``), else drawn per class from train with ``eval.split_seed`` on any labelled dataset; a
fraction that would leave a class without a clip is raised to one clip per class, and the run's tag
``eval.split.train_<p>pct`` records how many rows and for how many classes it was raised
(:mod:`oskar_ray.data.splits`). The protocols are those of ``eval.action_protocols`` (frozen linear,
attentive, kNN; fine-tuned; supervised from scratch — :mod:`oskar_ray.eval.action`), with the same
hyper-parameter selection on the full val split and scores on test as at 100 %; ``<p>pct/n_train`` is the
number of labelled clips each point learned from.
"""

from __future__ import annotations

from ..probes.views import action_views
from .action import protocol_results, record
from .context import EvalContext, TaskResult


def subsets(cfg) -> dict[str, str]:
    """Metric name -> logical split of each fraction of ``eval.lowshot_percents`` (``1pct`` -> ``train_1pct``)."""
    return {f"{p:g}pct": "train" if p == 100 else f"train_{p:g}pct" for p in cfg.eval.lowshot_percents}


def run_lowshot(ctx: EvalContext) -> TaskResult:
    result = TaskResult()
    for split in ("train", "val", "test", *subsets(ctx.cfg).values()):
        ctx.require_labels(split, "lowshot")
    views = {short: view for short, view in action_views(ctx.cfg.enabled_modalities).items()
             if view in ctx.cache.views}
    if not views:
        return TaskResult(skipped="the model has no action view (video, skeleton or an added modality)")
    curve: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    for name, split in subsets(ctx.cfg).items():
        percent = float(name.removesuffix("pct"))
        first = ctx.cache.get(split, next(iter(views.values()))).labels["action"]
        result.metrics[f"{name}/n_train"] = float((first >= 0).sum())  # the same clips for every view
        for short, view in views.items():
            test = ctx.cache.get("test", view).labels["action"]
            for protocol, res in protocol_results(ctx, view, ctx.cfg.eval.action_protocols, split).items():
                key = f"{short}/{protocol}/{name}"
                record(result, key, res, int((test >= 0).sum()), top5=False)
                low, high = result.intervals[f"{key}/top1"]
                curve.setdefault(short, {}).setdefault(protocol, []).append((percent, res.top1, low, high))
    result.plots["curve"] = curve
    return result
