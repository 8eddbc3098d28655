"""Action recognition on frozen features (and fine-tuned), per view.

Runbook::

    result = run_action(ctx)     # ctx: EvalContext (see api.evaluate)
    result.metrics["video/attentive/top1"]

Per view (``video``: video target encoder, ``skeleton``: skeleton target
encoder, ``fusion``: fusion encoder over video + skeleton) on train → val
(selection) → test: attentive probe on tokens, linear probe on pooled
features, kNN (k = ``eval.knn_k``, cosine) — the subset ``eval.action_protocols``; fine-tuning (``eval.finetune_epochs``
> 0) for the two unimodal views. Metrics: top-1 and top-5. Views whose
modality the model lacks (a video-only baseline) are skipped.
"""

from __future__ import annotations

from ..probes.heads import ProbeResult, attentive_probe, confusion_matrix, knn_probe, linear_probe
from ..probes.views import action_views
from .context import EvalContext, TaskResult
from .features import Features
from .finetune import finetune

#: views fine-tuned end to end (each costs a few encoder epochs)
FINETUNE_VIEWS = ("video", "skeleton")


def frozen_probes(ctx: EvalContext, view: str, train_split: str = "train", protocols=("attentive", "linear", "knn"),
                  test_split: str = "test") -> dict[str, ProbeResult]:
    n_classes = len(ctx.vocab("actions"))
    tr, va, te = (labelled(ctx.cache.get(s, view)) for s in (train_split, "val", test_split))
    y = [f.labels["action"] for f in (tr, va, te)]
    out: dict[str, ProbeResult] = {}
    if "attentive" in protocols:
        out["attentive"] = attentive_probe((tr.tokens, tr.valid, y[0]), (va.tokens, va.valid, y[1]),
                                           (te.tokens, te.valid, y[2]), n_classes, ctx.probe_epochs, ctx.seed,
                                           ctx.progress)
    if "linear" in protocols:
        out["linear"] = linear_probe(tr.pooled, y[0], va.pooled, y[1], te.pooled, y[2], n_classes, ctx.seed)
    if "knn" in protocols:
        out["knn"] = knn_probe(tr.pooled, y[0], te.pooled, y[2], n_classes, ctx.knn_k)
    return out


def labelled(feats: Features) -> Features:
    """The clips with an action label: an unlabelled one (-1; counted by :func:`unlabelled_counts`) can
    neither train a head nor score it."""
    keep = feats.labels["action"] >= 0
    if bool(keep.all()):
        return feats
    return Features(feats.pooled[keep], feats.tokens[keep], feats.valid[keep],
                    {k: v[keep] for k, v in feats.labels.items()})


def unlabelled_counts(ctx: EvalContext, view: str) -> dict[str, float]:
    """``unlabelled/<split>``: clips of each split the action probes left out for having no label."""
    counts = {s: int((ctx.cache.get(s, view).labels["action"] < 0).sum()) for s in ("train", "val", "test")}
    return {f"unlabelled/{s}": float(n) for s, n in counts.items() if n}


def run_action(ctx: EvalContext) -> TaskResult:
    for split in ("train", "val", "test"):
        ctx.require_split(split, "action")
    result = TaskResult()
    n_classes = len(ctx.vocab("actions"))
    for short, view in action_views(ctx.cfg.enabled_modalities).items():
        if view not in ctx.cache.views:
            continue
        probes = frozen_probes(ctx, view, protocols=tuple(ctx.cfg.eval.action_protocols))
        if ctx.finetune_epochs > 0 and short in FINETUNE_VIEWS:
            probes["finetune"] = finetune(ctx.model, view, ctx.dataset, ctx.cfg, train_split="train",
                                          test_split="test", n_classes=n_classes, epochs=ctx.finetune_epochs,
                                          seed=ctx.seed, progress=ctx.progress, plan=ctx.cache.plan)
        result.metrics.update(unlabelled_counts(ctx, view))
        for protocol, res in probes.items():
            result.metrics[f"{short}/{protocol}/top1"] = res.top1
            result.metrics[f"{short}/{protocol}/top5"] = res.top5
        if short == "video" or "confusion" not in result.plots:
            labels = ctx.cache.get("test", view).labels["action"]
            shown = next(p for p in ctx.cfg.eval.action_protocols if p in probes)
            result.plots["confusion"] = {"matrix": confusion_matrix(probes[shown].logits, labels[labels >= 0],
                                                                    n_classes),
                                         "classes": ctx.vocab("actions"), "title": f"{short} {shown} probe"}
    return result
