"""Robustness to a missing modality: an action probe trained on video + skeleton,
tested with a modality dropped.

Runbook::

    result = run_robustness(ctx)
    result.metrics["video_only/attentive/top1"], result.metrics["skeleton_only/linear/top1"]

The probes are trained once on fusion-encoder features of video + skeleton
(train; val for selection), then scored on test features computed by the
fusion encoder from both (``both``), video alone (``video_only``) and skeleton
alone (``skeleton_only``) — the deployment case of a sensor failing. The
attentive probe accepts any number of tokens, so the missing modality's tokens
are simply absent.
"""

from __future__ import annotations

from .context import EvalContext, TaskResult
from .probes import fit_attentive, fit_linear, predict_attentive, topk_accuracy

SETTINGS = {"both": "fusion:video+skeleton", "video_only": "fusion:video", "skeleton_only": "fusion:skeleton"}


def run_robustness(ctx: EvalContext) -> TaskResult:
    result = TaskResult()
    if any(view not in ctx.cache.views for view in SETTINGS.values()):
        return result  # needs both modalities (not a video-only model)
    n_classes = len(ctx.vocab("actions"))
    tr, va = ctx.cache.get("train", SETTINGS["both"]), ctx.cache.get("val", SETTINGS["both"])
    y_tr, y_va = tr.labels["action"], va.labels["action"]
    linear = fit_linear(tr.pooled, y_tr, va.pooled, y_va, n_classes, ctx.seed)
    attentive, _ = fit_attentive((tr.tokens, tr.valid, y_tr), (va.tokens, va.valid, y_va), n_classes,
                                 ctx.probe_epochs, ctx.seed, ctx.progress)
    for setting, view in SETTINGS.items():
        te = ctx.cache.get("test", view)
        y_te = te.labels["action"]
        result.metrics[f"{setting}/linear/top1"] = topk_accuracy(linear(te.pooled), y_te, 1)
        result.metrics[f"{setting}/attentive/top1"] = topk_accuracy(
            predict_attentive(attentive, te.tokens, te.valid), y_te, 1)
    return result
