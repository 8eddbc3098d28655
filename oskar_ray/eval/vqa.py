"""Video question answering: a question-conditioned attentive head over frozen clip tokens.

Runbook::

    result = run_vqa(ctx)
    result.metrics["accuracy"], result.metrics["type/count/accuracy"], result.metrics["type/count/prior"]
    result.metrics["mc_accuracy"], result.metrics["video+skeleton/accuracy"]
    result.metrics["mc/accuracy"], result.metrics["mc/questions"], result.metrics["mc/chance"]  # ingested choices

Every (clip, question) pair is one row (all question types, not only the first). The question is read by the
*text target encoder* (pooled, z-scored with train moments: like captions, pooled text features are
dominated by the token positions); the clip by the frozen target-encoder tokens of the video (headline) and
of video + skeleton together (the subset ``eval.vqa_views``), z-scored per dimension with train moments. The
question's projection steers the attention query over the clip tokens and joins the attended clip feature
before the classifier, so what is read from the clip depends on what is asked (a single question-independent
query has to carry every fact at once). Open-ended: classify into the whole answer vocabulary
(``manifest.json`` ``vocab.answers``), LR chosen on val, scored on test — overall and per question type,
each beside its *prior* (the type's most frequent train answer). Multiple choice, where a test question has
ingested choices (TGIF-QA action/transition, NExT-QA, JSON ``choices``: the ``choices`` column): the same
scores ranked over that question's own choices, each mapped to its answer-vocabulary class (ingest adds every
choice to ``vocab.answers``; an exact, else case- and space-insensitive, match) — ``mc/accuracy`` beside
``mc/chance`` (the mean of 1 / its distinct choices) over ``mc/questions`` questions; a question whose choices
cannot all be mapped (a dataset ingested before choices joined the vocabulary), or whose answer is not among
them, is counted in ``mc/skipped``, never silently dropped. A class never seen as a train answer (most
distractors) only ever had its logit pushed down, so where answers are rarely repeated (NExT-QA's phrases) the
ranking leans on the train answer prior: read ``mc/accuracy`` beside ``mc/chance``. Questions without choices
keep ``mc_accuracy``: the scores restricted to the answers seen with the question's type in train. A model
without text gets no VQA; one whose recipe never trained text is still evaluated (``eval/api`` tags the run).

Every accuracy carries its 95 % Wilson interval (``<metric>_ci95_lo / _hi``) over the questions it scored
(all, a type's, the open ones, the rankable ones). A clip's questions are not independent draws, so on a test
set of few clips the interval is, if anything, narrow. Priors, the chance level and counts come from labels
alone and have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.splits import SplitSource
from ..probes.heads import predict_attentive, select_head, standardize, topk_accuracy, train_moments
from .context import EvalContext, TaskResult
from .features import read_rows

QUESTION_VIEW = "target:question"
HIDDEN = 256
#: LRs tried (chosen on val): the middle of the attentive probes' grid, at half its cost
VQA_LRS = (1e-3, 3e-3)
MIN_EPOCHS = 10
#: the clip readings scored: the headline video alone, and every clip modality together
CLIP_VIEWS = {"video": ("target:video",), "video+skeleton": ("target:video", "target:skeleton")}


class QuestionConditionedHead(nn.Module):
    """Query = learned query + f(question); answer = MLP([attended clip tokens; f(question)])."""

    def __init__(self, dim: int, question_dim: int, n_answers: int, heads: int = 4):
        super().__init__()
        # a width of 256 read oracle facts at 94-100 % per type where the clip width (28) read 90-99 %
        hidden = max(HIDDEN, 2 * dim)
        self.question = nn.Sequential(nn.Linear(question_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_in = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        asked = self.question(question.float())
        keys = self.norm_in(tokens.float())
        valid = valid | ~valid.any(dim=1, keepdim=True)
        pooled, _ = self.attn(self.query + asked[:, None], keys, keys, key_padding_mask=~valid, need_weights=False)
        return self.head(torch.cat([self.norm_out(pooled[:, 0]), asked], dim=-1))


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


def type_counts(types: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Questions of each type (``type/<name>/accuracy`` -> count): what each per-type accuracy is over."""
    return {f"type/{name}/accuracy": int((types == t).sum()) for t, name in enumerate(names)}


def type_priors(train_answers: torch.Tensor, train_types: torch.Tensor, answers: torch.Tensor,
                types: torch.Tensor, names: list[str]) -> dict[str, float]:
    """Accuracy of answering each question with its type's most frequent train answer (overall + per type)."""
    guess = torch.full_like(answers, -1)
    out = {}
    for t, name in enumerate(names):
        seen = train_answers[train_types == t]
        if len(seen) and bool((types == t).any()):
            guess[types == t] = torch.mode(seen).values
            out[f"type/{name}/prior"] = float((answers[types == t] == guess[types == t]).float().mean())
    out["prior"] = float((guess == answers).float().mean())
    return out


@dataclass
class ChoiceSets:
    """Per test question: its choices as answer ids (``ids``, -1: padding or unmapped), whether it has any
    (``has``) and whether they can be ranked (``rankable``: all mapped, the answer among them)."""

    ids: torch.Tensor
    has: torch.Tensor
    rankable: torch.Tensor


def question_choices(dataset: str, split: SplitSource) -> list[list[str]]:
    """Each question row's ingested choices ([]: none), in the question features' order."""
    out: list[list[str]] = []
    for row in read_rows(dataset, split, ["questions", "choices"]):
        listed = row.get("choices") or []
        out += [list(listed[k] or []) if k < len(listed) else [] for k in range(len(row.get("questions") or []))]
    return out


def _loose(text: str) -> str:
    return " ".join(text.casefold().split())


def choice_sets(choices: list[list[str]], answers: torch.Tensor, vocab: list[str]) -> ChoiceSets:
    exact = {a: i for i, a in enumerate(vocab)}
    loose: dict[str, int] = {}
    for i, a in enumerate(vocab):
        loose.setdefault(_loose(a), i)
    ids = torch.full((len(choices), max((len(c) for c in choices), default=1) or 1), -1, dtype=torch.long)
    rankable = torch.zeros(len(choices), dtype=torch.bool)
    for n, listed in enumerate(choices):
        mapped = [exact.get(c, loose.get(_loose(c), -1)) for c in listed]
        ids[n, :len(mapped)] = torch.tensor(mapped, dtype=torch.long)
        rankable[n] = bool(mapped) and -1 not in mapped and int(answers[n]) in mapped
    return ChoiceSets(ids, torch.tensor([bool(c) for c in choices], dtype=torch.bool), rankable)


def choice_accuracy(logits: torch.Tensor, answers: torch.Tensor, sets: ChoiceSets) -> float:
    """Accuracy when each rankable question picks the best-scored of its own choices."""
    rows = sets.rankable
    ids = sets.ids[rows]
    scores = logits[rows].gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    picked = ids.gather(1, scores.argmax(1, keepdim=True))[:, 0]
    return float((picked == answers[rows]).float().mean())


def choice_counts(sets: ChoiceSets) -> dict[str, float]:
    """How many questions were ranked over their choices, how many could not be, and the chance level."""
    distinct = [len(set(r[r >= 0].tolist())) for r in sets.ids[sets.rankable]]
    return {"mc/questions": float(len(distinct)), "mc/skipped": float((sets.has & ~sets.rankable).sum()),
            "mc/chance": sum(1 / n for n in distinct) / len(distinct) if distinct else float("nan")}


def questions_per_clip(dataset: str, split: str | SplitSource) -> torch.Tensor:
    """How many question rows each clip expands into, in stored order (the clip features' order)."""
    return torch.tensor([len(r.get("questions") or []) for r in read_rows(dataset, split, ["questions"])])


def clip_tokens(ctx: EvalContext, views: tuple[str, ...], splits: tuple[str, ...],
                repeats: list[torch.Tensor]) -> list[tuple]:
    """Per split: (tokens, valid) of the views side by side, z-scored per dimension with train moments over
    valid tokens, each clip's row repeated once per question (``repeats``: :func:`questions_per_clip`)."""
    parts = [[ctx.cache.get(s, v) for v in views] for s in splits]
    tokens = [torch.cat([f.tokens for f in p], dim=1).float() for p in parts]
    valid = [torch.cat([f.valid for f in p], dim=1) for p in parts]
    mean, std = train_moments(tokens[0][valid[0]])
    return [(((t - mean) / std).repeat_interleave(r, 0), m.repeat_interleave(r, 0))
            for t, m, r in zip(tokens, valid, repeats, strict=True)]


def matched_epochs(probe_epochs: int, n_clips: int, n_rows: int) -> int:
    """Epochs over the (clip, question) rows that give the head as many steps as an action probe gets over
    the clips (~3.5 questions per clip: 60 epochs over the rows cost ~13 min single-threaded on 2 cores)."""
    return max(MIN_EPOCHS, round(probe_epochs * n_clips / max(n_rows, 1)))


def run_vqa(ctx: EvalContext) -> TaskResult:
    missing = [m for m, v in (("video", "target:video"), ("text", QUESTION_VIEW)) if v not in ctx.cache.views]
    if missing:
        return TaskResult(skipped=f"the model has no {' or '.join(missing)} encoder")
    splits = ("train", "val", "test")
    for split in splits:
        ctx.require_split(split, "vqa")
    answers, type_names = ctx.vocab("answers"), ctx.vocab("question_types")
    asked = [ctx.cache.get(s, QUESTION_VIEW) for s in splits]
    questions = standardize(*(q.pooled for q in asked))
    labels = [q.labels["answer"] for q in asked]
    types = [q.labels["question_type"] for q in asked]
    keep = [y >= 0 for y in labels]  # a row without an answer is not scored
    metrics = type_priors(labels[0][keep[0]], types[0][keep[0]], labels[2][keep[2]], types[2][keep[2]], type_names)
    options = option_sets(labels[0][keep[0]], types[0][keep[0]], len(answers), len(type_names))
    repeats = [questions_per_clip(ctx.dataset, ctx.cache.plan.source(s)) for s in splits]
    sets = _test_choices(ctx, keep[2], labels[2][keep[2]], answers)
    if bool(sets.has.any()):
        metrics.update(choice_counts(sets))
    scored: dict[str, tuple[float, int]] = {}
    for name, views in CLIP_VIEWS.items():
        if name not in ctx.cfg.eval.vqa_views or not all(v in ctx.cache.views for v in views):
            continue
        clips = clip_tokens(ctx, views, splits, repeats)
        rows = [(*c, q, y) for c, q, y in zip(clips, questions, labels, strict=True)]
        rows = [tuple(x[k] for x in r) for r, k in zip(rows, keep, strict=True)]
        dim, question_dim = rows[0][0].shape[-1], rows[0][2].shape[-1]
        epochs = matched_epochs(ctx.probe_epochs, n_clips=len(repeats[0]), n_rows=len(rows[0][-1]))
        head, _ = select_head(lambda d=dim, q=question_dim: QuestionConditionedHead(d, q, len(answers)),
                              rows[0], rows[1], epochs, ctx.seed, ctx.progress, lrs=VQA_LRS)
        logits = predict_attentive(head, *rows[2][:-1])
        test_answers, test_types = rows[2][-1], types[2][keep[2]]
        # accuracy -> (value, questions scored): each gets a Wilson interval over its questions
        per_type = per_type_accuracy(logits, test_answers, test_types, type_names)
        found = {"accuracy": (topk_accuracy(logits, test_answers, 1), len(test_answers)),
                 **{k: (per_type[k], n) for k, n in type_counts(test_types, type_names).items() if k in per_type}}
        open_rows = ~sets.has  # questions without their own choices: the type's train answers are the options
        if bool(open_rows.any()):
            found["mc_accuracy"] = (multiple_choice_accuracy(logits[open_rows], test_answers[open_rows],
                                                             test_types[open_rows], options), int(open_rows.sum()))
        if bool(sets.rankable.any()):
            found["mc/accuracy"] = (choice_accuracy(logits, test_answers, sets), int(sets.rankable.sum()))
        prefix = "" if name == "video" else f"{name}/"
        scored.update({prefix + k: v for k, v in found.items()})
    result = TaskResult(metrics=metrics)
    for key, (value, n) in scored.items():
        result.add(key, value, n=n)
    return result


def _test_choices(ctx: EvalContext, keep: torch.Tensor, answers: torch.Tensor, vocab: list[str]) -> ChoiceSets:
    """The scored test questions' choice sets (rows without an answer dropped, as from the features)."""
    listed = question_choices(ctx.dataset, ctx.cache.plan.source("test"))
    if len(listed) != len(keep):
        raise ValueError(f"{ctx.dataset}: {len(listed)} test questions in the store but {len(keep)} question "
                         "features: the feature cache is stale for this dataset")
    return choice_sets([c for c, k in zip(listed, keep.tolist(), strict=True) if k], answers, vocab)
