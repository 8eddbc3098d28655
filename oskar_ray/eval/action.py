"""Action recognition per view: frozen probes, fine-tuning, and the same network trained from scratch.

Runbook::

    result = run_action(ctx)     # ctx: EvalContext (see api.evaluate)
    result.metrics["video/attentive/top1"], result.intervals["video/attentive/top1"]   # top-1 and its 95 % CI
    results = protocol_results(ctx, "target:video", ("linear", "finetune"), train_split="train_10pct")

Per view (``video``: video target encoder, ``skeleton``: skeleton target
encoder, ``fusion``: fusion encoder over video + skeleton) on train → val
(selection) → test, the protocols of ``eval.action_protocols``: attentive probe on tokens, linear probe on
pooled features, kNN (k = ``eval.knn_k``, cosine), ``finetune`` (the encoder end to end,
:mod:`oskar_ray.eval.finetune`) and ``supervised`` (the same network and schedule from random init; the
end-to-end pair is off with ``eval.finetune_epochs: 0``). Metrics: top-1 and top-5, each top-1 with its
Wilson 95 % interval. Views whose modality the model lacks (a video-only baseline) are skipped.
Results are memoised per (view, protocol, split) on the context: the low-shot task's 100 % point reuses them.
"""

from __future__ import annotations

from ..metric_names import END_TO_END_PROTOCOLS
from ..probes.heads import ProbeResult, attentive_probe, confusion_matrix, knn_probe, linear_probe
from ..probes.views import action_views
from .context import EvalContext, TaskResult
from .features import Features
from .finetune import FinetuneResult, finetune

FROZEN_PROTOCOLS = ("attentive", "linear", "knn")


def frozen_probes(ctx: EvalContext, view: str, train_split: str = "train", protocols=FROZEN_PROTOCOLS,
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


def protocol_results(ctx: EvalContext, view: str, protocols, train_split: str = "train") -> dict[str, ProbeResult]:
    """The results of ``protocols`` on ``view`` trained on ``train_split`` (memoised on ``ctx``)."""
    runnable = [p for p in protocols if p not in END_TO_END_PROTOCOLS or ctx.finetune_epochs > 0]
    todo = [p for p in runnable if (view, p, train_split) not in ctx.results]
    frozen = [p for p in todo if p in FROZEN_PROTOCOLS]
    if frozen:
        for protocol, res in frozen_probes(ctx, view, train_split, tuple(frozen)).items():
            ctx.results[(view, protocol, train_split)] = res
    for protocol in (p for p in todo if p in END_TO_END_PROTOCOLS):
        scratch = protocol == "supervised"
        model, cache = ctx.scratch if scratch else (ctx.model, ctx.cache)
        ctx.results[(view, protocol, train_split)] = finetune(
            model, cache, view, ctx.cfg, train_split=train_split, n_classes=len(ctx.vocab("actions")),
            seed=ctx.seed, progress=ctx.progress, from_scratch=scratch)
    return {p: ctx.results[(view, p, train_split)] for p in runnable}


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


def record(result: TaskResult, prefix: str, res: ProbeResult, n_test: int, top5: bool = True) -> None:
    """``<prefix>/top1`` (+ its interval), ``top5``, and what early stopping chose for an end-to-end run."""
    result.add(f"{prefix}/top1", res.top1, n=n_test)
    if top5:
        result.add(f"{prefix}/top5", res.top5, n=n_test)
    if isinstance(res, FinetuneResult):
        result.metrics[f"{prefix}/best_step"] = float(res.best_step)
        result.metrics[f"{prefix}/steps_run"] = float(res.steps_run)
        result.metrics[f"{prefix}/stop_top1"] = res.stop_top1
        result.notes[f"{prefix.replace('/', '.')}.stopped_on"] = (
            f"{res.stop_split}: {res.n_fit} clips fitted" + (" (one clip per class: nothing to carve, val "
                                                            "decided)" if res.stop_split == "val" else ""))


def run_action(ctx: EvalContext) -> TaskResult:
    for split in ("train", "val", "test"):
        ctx.require_labels(split, "action")
    result = TaskResult()
    n_classes = len(ctx.vocab("actions"))
    for short, view in action_views(ctx.cfg.enabled_modalities).items():
        if view not in ctx.cache.views:
            continue
        probes = protocol_results(ctx, view, ctx.cfg.eval.action_protocols)
        result.metrics.update(unlabelled_counts(ctx, view))
        labels = ctx.cache.get("test", view).labels["action"]
        n_test = int((labels >= 0).sum())
        for protocol, res in probes.items():
            record(result, f"{short}/{protocol}", res, n_test)
        shown = next((p for p in ctx.cfg.eval.action_protocols if p in probes), None)
        if shown and (short == "video" or "confusion" not in result.plots):
            result.plots["confusion"] = {"matrix": confusion_matrix(probes[shown].logits, labels[labels >= 0],
                                                                    n_classes),
                                         "classes": ctx.vocab("actions"), "title": f"{short} {shown} probe"}
    return result
