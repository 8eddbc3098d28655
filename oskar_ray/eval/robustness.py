"""Robustness to a missing modality: an action probe trained on every clip modality, tested with each one
dropped in turn.

Runbook::

    result = run_robustness(ctx)
    result.metrics["no_text/attentive/top1"], result.metrics["video_only/linear/top1"]

The probes are trained once on fusion-encoder features of all the clip's modalities (video + skeleton +
text, the caption; train, val for selection), then scored on test features the fusion encoder computes
from all of them (``all``), from all but one (``no_video``, ``no_skeleton``, ``no_text``) and from one
alone (``video_only``, ``skeleton_only``) — the deployment case of a sensor failing or a clip without a
caption. The attentive probe accepts any number of tokens, so a missing modality's tokens are simply absent.
Each top-1 carries its 95 % Wilson interval over the test clips scored (``<metric>_ci95_lo / _hi``): the
settings share their clips, so two settings' intervals overlapping does not by itself make them equal.
"""

from __future__ import annotations

from ..probes.heads import fit_attentive, fit_linear, predict_attentive, topk_accuracy
from .context import EvalContext, TaskResult

MODALITIES = ("video", "skeleton", "text")


def settings(modalities: tuple[str, ...] = MODALITIES) -> dict[str, str]:
    """{setting: fusion view} for a model with these modalities (config order)."""
    out = {"all": "fusion:" + "+".join(modalities)}
    for dropped in modalities:
        out[f"no_{dropped}"] = "fusion:" + "+".join(m for m in modalities if m != dropped)
    for kept in modalities:
        if kept != "text":  # a caption alone is not a clip
            out[f"{kept}_only"] = f"fusion:{kept}"
    return out


def run_robustness(ctx: EvalContext) -> TaskResult:
    present = tuple(m for m in MODALITIES if m in ctx.model.modalities)
    if len(present) < 2:
        return TaskResult(skipped=f"needs two modalities to drop one (the model has {list(present)})")
    views = settings(present)
    n_classes = len(ctx.vocab("actions"))
    tr, va = ctx.cache.get("train", views["all"]), ctx.cache.get("val", views["all"])
    y_tr, y_va = tr.labels["action"], va.labels["action"]
    linear = fit_linear(tr.pooled, y_tr, va.pooled, y_va, n_classes, ctx.seed)
    attentive, _ = fit_attentive((tr.tokens, tr.valid, y_tr), (va.tokens, va.valid, y_va), n_classes,
                                 ctx.probe_epochs, ctx.seed, ctx.progress)
    result = TaskResult()
    for setting, view in views.items():
        te = ctx.cache.get("test", view)
        y_te = te.labels["action"]
        result.add(f"{setting}/linear/top1", topk_accuracy(linear(te.pooled), y_te, 1), n=len(y_te))
        result.add(f"{setting}/attentive/top1", topk_accuracy(predict_attentive(attentive, te.tokens, te.valid),
                                                              y_te, 1), n=len(y_te))
    return result
