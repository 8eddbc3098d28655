"""Low-shot action recognition: linear probe and fine-tuning on 1 % / 10 % of the labels.

Runbook::

    result = run_lowshot(ctx)
    result.metrics["1pct/video/linear/top1"], result.metrics["10pct/video/finetune/top1"]

Each fraction of ``eval.lowshot_percents`` is a logical split ``train_<p>pct``:
a stored split of that name (``oskar data synth`` writes ``train_1pct`` /
``train_10pct``), else drawn per class from train with ``eval.split_seed``, at
least one clip per class (:mod:`oskar_ray.data.splits`); the run's tag
``eval.split.train_<p>pct`` records how and how many. Hyper-parameters are still chosen on the full val split
(stored or carved), scores on test.
"""

from __future__ import annotations

from ..probes.views import ACTION_VIEWS
from .action import frozen_probes
from .context import EvalContext, TaskResult
from .finetune import finetune


def subsets(cfg) -> dict[str, str]:
    """Metric name -> logical split of each fraction of ``eval.lowshot_percents`` (``1pct`` -> ``train_1pct``)."""
    return {f"{p:g}pct": f"train_{p:g}pct" for p in cfg.eval.lowshot_percents}


def run_lowshot(ctx: EvalContext) -> TaskResult:
    result = TaskResult()
    n_classes = len(ctx.vocab("actions"))
    for split in ("train", "val", "test"):
        ctx.require_split(split, "lowshot")
    views = {short: ACTION_VIEWS[short] for short in ("video", "skeleton") if ACTION_VIEWS[short] in ctx.cache.views}
    if not views:
        return TaskResult(skipped="the model has neither a video nor a skeleton encoder")
    for name, split in subsets(ctx.cfg).items():
        for short, view in views.items():
            probe = frozen_probes(ctx, view, train_split=split, protocols=("linear",))["linear"]
            result.metrics[f"{name}/{short}/linear/top1"] = probe.top1
            if ctx.finetune_epochs > 0 and short == "video":
                # a tiny subset needs more passes to take as many optimisation steps
                tuned = finetune(ctx.model, view, ctx.dataset, ctx.cfg, train_split=split, test_split="test",
                                 n_classes=n_classes, epochs=ctx.finetune_epochs * 3, batch_size=16, seed=ctx.seed,
                                 progress=ctx.progress, plan=ctx.cache.plan)
                result.metrics[f"{name}/{short}/finetune/top1"] = tuned.top1
    return result
