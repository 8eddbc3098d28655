"""Video question answering: an answer classifier on fusion-encoder features of
(video tokens + question tokens).

Runbook::

    result = run_vqa(ctx)
    result.metrics["accuracy"], result.metrics["type/count/accuracy"], result.metrics["mc_accuracy"]

Every (clip, question) pair is one row (all question types, not only the first).
Open-ended: an attentive probe over the fused tokens classifies into the whole
answer vocabulary (``manifest.json`` ``vocab.answers``), trained on train,
selected on val, scored on test — overall and per question type. Multiple
choice: the same scores restricted to the candidate answers of the question's
type (every answer seen with that type in train); the highest-scoring option wins.
"""

from __future__ import annotations

import torch

from .context import EvalContext, TaskResult
from .probes import attentive_probe

VQA_VIEW = "fusion:video+question"


def option_sets(answers: torch.Tensor, types: torch.Tensor, n_answers: int, n_types: int) -> torch.Tensor:
    """``(n_types, n_answers)`` bool: the answers each question type admits (seen in train)."""
    options = torch.zeros(n_types, n_answers, dtype=torch.bool)
    keep = (types >= 0) & (answers >= 0)
    options[types[keep], answers[keep]] = True
    return options


def multiple_choice_accuracy(logits: torch.Tensor, answers: torch.Tensor, types: torch.Tensor,
                             options: torch.Tensor) -> float:
    """Accuracy when each question only scores the options of its type."""
    allowed = options[types.clamp(min=0)]
    masked = logits.masked_fill(~allowed, float("-inf"))
    return float((masked.argmax(1) == answers).float().mean())


def per_type_accuracy(logits: torch.Tensor, answers: torch.Tensor, types: torch.Tensor,
                      names: list[str]) -> dict[str, float]:
    correct = logits.argmax(1) == answers
    return {f"type/{name}/accuracy": float(correct[types == t].float().mean())
            for t, name in enumerate(names) if bool((types == t).any())}


def run_vqa(ctx: EvalContext) -> TaskResult:
    if VQA_VIEW not in ctx.cache.views:
        return TaskResult()  # the model lacks video or text
    for split in ("train", "val", "test"):
        ctx.require_split(split, "vqa")
    answers, type_names = ctx.vocab("answers"), ctx.vocab("question_types")
    feats = [ctx.cache.get(s, VQA_VIEW) for s in ("train", "val", "test")]
    keep = [f.labels["answer"] >= 0 for f in feats]  # a row without a question has no answer
    parts = [(f.tokens[k], f.valid[k], f.labels["answer"][k]) for f, k in zip(feats, keep, strict=True)]
    probe = attentive_probe(*parts, n_classes=len(answers), epochs=ctx.probe_epochs, seed=ctx.seed,
                            progress=ctx.progress)
    test_types = feats[2].labels["question_type"][keep[2]]
    train_types = feats[0].labels["question_type"][keep[0]]
    options = option_sets(parts[0][2], train_types, len(answers), len(type_names))
    metrics = {"accuracy": probe.top1,
               "mc_accuracy": multiple_choice_accuracy(probe.logits, parts[2][2], test_types, options)}
    metrics.update(per_type_accuracy(probe.logits, parts[2][2], test_types, type_names))
    return TaskResult(metrics=metrics)
