"""Low-shot action recognition: linear probe and fine-tuning on 1 % / 10 % of the labels.

Runbook::

    result = run_lowshot(ctx)
    result.metrics["1pct/video/linear/top1"], result.metrics["10pct/video/finetune/top1"]

Uses the class-balanced ``train_1pct`` / ``train_10pct`` splits of the dataset
(written by ``oskar data synth``; a dataset without them skips that fraction);
hyper-parameters are still chosen on the full val split, scores on test.
"""

from __future__ import annotations

from ..probes.views import ACTION_VIEWS
from .action import frozen_probes
from .context import EvalContext, TaskResult
from .finetune import finetune

SUBSETS = {"1pct": "train_1pct", "10pct": "train_10pct"}


def run_lowshot(ctx: EvalContext) -> TaskResult:
    result = TaskResult()
    n_classes = len(ctx.vocab("actions"))
    present = {name: split for name, split in SUBSETS.items() if ctx.has_split(split)}
    if not present:
        raise ValueError(f"{ctx.dataset}/manifest.json: low-shot needs split train_1pct or train_10pct")
    for name, split in present.items():
        for short in ("video", "skeleton"):
            view = ACTION_VIEWS[short]
            if view not in ctx.cache.views:
                continue
            probe = frozen_probes(ctx, view, train_split=split, protocols=("linear",))["linear"]
            result.metrics[f"{name}/{short}/linear/top1"] = probe.top1
            if ctx.finetune_epochs > 0 and short == "video":
                # a tiny subset needs more passes to take as many optimisation steps
                tuned = finetune(ctx.model, view, ctx.dataset, ctx.cfg, train_split=split, test_split="test",
                                 n_classes=n_classes, epochs=ctx.finetune_epochs * 3, batch_size=16, seed=ctx.seed,
                                 progress=ctx.progress)
                result.metrics[f"{name}/{short}/finetune/top1"] = tuned.top1
    return result
