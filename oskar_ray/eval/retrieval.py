"""Video–text retrieval: two linear projection heads on standardised frozen features, symmetric InfoNCE.

Runbook::

    result = run_retrieval(ctx)
    result.metrics["t2v/R1"], result.metrics["v2t/medR"], result.metrics["t2v/fact_R1"]

Frozen pooled features of the video target encoder and the text target encoder (each clip's first
caption) are z-scored with the train split's moments (the probes' :func:`standardize`): pooled text
features are nearly one shared vector — the token positions explain ~99.5 % of their variance — so
without it a cosine sees only that vector (text -> video R@1 0.0 % from oracle video features; 55.5 %
z-scored). One linear projection per side is trained on train pairs with a symmetric InfoNCE loss
(CLIP-style, learned temperature), full batch; the weight decay and the step count are chosen on val
(mean of both directions' R@1). On test every caption ranks every clip (t2v) and vice versa (v2t):
Recall@1/5/10 (%) and median rank (1 = perfect); where the rows carry facts (the built-in benchmark),
also fact-level R@1 and the ceiling that duplicate captions allow (:mod:`oskar_ray.eval.facts`).

Where the model was pretrained with a video -> caption contrast (``model.align_to`` holds ``text``), the same
test ranking is also read through that term's own heads, untrained here (``zeroshot/t2v/R1`` ...): what
pretraining itself tied together, against what 500 labelled pairs teach fresh heads.

Every test metric carries its 95 % interval (``<metric>_ci95_lo / _hi``, :mod:`oskar_ray.eval.intervals`):
Recall@K and fact-level R@1 are proportions over the test queries (Wilson, in %); the median rank is a
percentile bootstrap over the queries (the gallery fixed: each query's rank against every item stays as
computed), seeded by the eval seed. ``val_mean_R1`` (selection) and the ``R1_ceiling`` (facts alone) have none.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..probes.heads import single_threaded, standardize
from .context import EvalContext, TaskResult
from .facts import fact_metrics, load_facts
from .intervals import bootstrap, wilson

PROJ_DIM = 128
RETRIEVAL_STEPS = 300
RETRIEVAL_LR = 3e-3
#: weight decays tried (chosen on val): 500 pairs fit a 128 x 128 map exactly without a penalty
RETRIEVAL_WEIGHT_DECAYS = (0.01, 0.1, 1.0)
#: the val score is read every this many steps; the best step's heads are kept
SELECT_EVERY = 25
RECALL_AT = (1, 5, 10)
#: the proportions among the metrics (Wilson intervals): Recall@K and fact-level R@1
RECALL_KEY = re.compile(r"^(R\d+|fact_R1)$")
VIDEO_VIEW, TEXT_VIEW = "target:video", "target:text"
#: the video features the clip-level contrast's context head was trained on
ZERO_SHOT_VIDEO = "fusion:video"


class ProjectionHeads(nn.Module):
    """Linear maps of (already standardised) features into a shared space."""

    def __init__(self, video_dim: int, text_dim: int, dim: int = PROJ_DIM):
        super().__init__()
        self.video = nn.Linear(video_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature

    def similarity(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(n_text, n_video)`` cosine similarities of the projections."""
        return F.normalize(self.text(text.float()), dim=1) @ F.normalize(self.video(video.float()), dim=1).T


def info_nce(sim: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i's positive is column i, in both directions."""
    logits = sim * log_scale.clamp(max=4.6).exp()  # temperature floor 0.01, as in CLIP
    target = torch.arange(len(sim))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _check_pairs(video: torch.Tensor, text: torch.Tensor, split: str) -> None:
    if len(video) != len(text):
        raise ValueError(f"retrieval {split}: {len(video)} video rows but {len(text)} text rows")


def mean_r1(sim: torch.Tensor) -> float:
    m = retrieval_metrics(sim)
    return (m["t2v/R1"] + m["v2t/R1"]) / 2


@single_threaded
def train_heads(video: torch.Tensor, text: torch.Tensor, val_video: torch.Tensor, val_text: torch.Tensor,
                seed: int = 0, steps: int = RETRIEVAL_STEPS) -> tuple[ProjectionHeads, float]:
    """Heads on standardised features (``video``/``text`` train rows pair up by index) with the best val
    mean R@1 over weight decays and steps, and that score."""
    _check_pairs(video, text, "train")
    _check_pairs(val_video, val_text, "val")
    best: tuple[ProjectionHeads, float] | None = None
    for decay in RETRIEVAL_WEIGHT_DECAYS:
        torch.manual_seed(seed)
        heads = ProjectionHeads(video.shape[1], text.shape[1])
        opt = torch.optim.AdamW(heads.parameters(), lr=RETRIEVAL_LR, weight_decay=decay)
        for step in range(1, steps + 1):
            opt.zero_grad()
            info_nce(heads.similarity(video, text), heads.log_scale).backward()
            opt.step()
            if step % SELECT_EVERY == 0:
                with torch.no_grad():
                    score = mean_r1(heads.similarity(val_video, val_text))
                if best is None or score > best[1]:
                    best = (copy.deepcopy(heads), score)
    assert best is not None
    return best


def ranks(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of the diagonal (true) item in each row; ties count against the query
    (a collapsed encoder scoring everything equal must not look perfect)."""
    true = sim.diagonal()[:, None]
    return (sim > true).sum(1) + (sim == true).sum(1)


def retrieval_metrics(sim: torch.Tensor) -> dict[str, float]:
    """``sim[i, j]`` = score of text i vs video j, true pairs on the diagonal."""
    out: dict[str, float] = {}
    for name, matrix in (("t2v", sim), ("v2t", sim.T)):
        r = ranks(matrix).float()
        for k in RECALL_AT:
            out[f"{name}/R{k}"] = float((r <= k).float().mean() * 100)
        out[f"{name}/medR"] = float(r.median())
    return out


def lower_median(values: np.ndarray) -> float:
    """The median as ``torch.median`` reads it: the lower of the two middle values of an even count."""
    return float(np.partition(values, (len(values) - 1) // 2)[(len(values) - 1) // 2])


def retrieval_intervals(sim: torch.Tensor, metrics: dict[str, float], seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % intervals of :func:`retrieval_metrics` / :func:`~oskar_ray.eval.facts.fact_metrics` keys of ``sim``
    (``metrics``: their values): Wilson for the recalls (%) over the ``len(sim)`` queries of each direction; a
    seeded bootstrap over the queries for the median rank. Other keys (the ceilings) get none."""
    out: dict[str, tuple[float, float]] = {}
    for name, matrix in (("t2v", sim), ("v2t", sim.T)):
        n = matrix.shape[0]
        for key, value in metrics.items():
            if key.startswith(f"{name}/") and RECALL_KEY.match(key.removeprefix(f"{name}/")):
                low, high = wilson(value / 100, n)
                out[key] = (100 * low, 100 * high)
        if f"{name}/medR" in metrics:
            r = ranks(matrix).numpy()
            out[f"{name}/medR"] = bootstrap(lambda idx, r=r: lower_median(r[idx]), n, seed)
    return out


def recall_curve(sim: torch.Tensor, max_k: int = 50) -> dict[str, list[float]]:
    """Recall@K for K = 1..max_k in both directions (the report's plot)."""
    curve = {}
    for name, matrix in (("t2v", sim), ("v2t", sim.T)):
        r = ranks(matrix)
        curve[name] = [float((r <= k).float().mean() * 100) for k in range(1, min(max_k, len(r)) + 1)]
    return curve


def standardised_pairs(ctx: EvalContext) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (video, text)} pooled features of train / val / test, z-scored with train moments."""
    splits = ("train", "val", "test")
    video = standardize(*(ctx.cache.get(s, VIDEO_VIEW).pooled for s in splits))
    text = standardize(*(ctx.cache.get(s, TEXT_VIEW).pooled for s in splits))
    return {s: (v, t) for s, v, t in zip(splits, video, text, strict=True)}


def zero_shot_similarity(ctx: EvalContext) -> torch.Tensor | None:
    """``(n_text, n_video)`` test similarities through the model's own video -> caption contrast heads
    (model/align.py), no head trained here: CLIP-style zero-shot retrieval, None without that term.

    Both sides are prepared as in pretraining (``Oskar._add_alignment``): the video side is the fusion encoder
    over the clip's video tokens alone, pooled (what the context head saw for every clip the caption term kept);
    the caption side the pooled caption target features, layer-normed, then standardised (train-split moments
    stand in for the batch + queue moments)."""
    alignment = getattr(ctx.model, "alignment", {})
    if "text" not in alignment or ctx.cfg.model.align_from != "video" or ZERO_SHOT_VIDEO not in ctx.cache.views:
        return None
    heads = alignment["text"]
    device = next(heads.parameters()).device
    caption = [F.layer_norm(ctx.cache.get(s, TEXT_VIEW).pooled.float(), (heads.target_head.in_features,))
               for s in ("train", "test")]
    _, caption = standardize(*caption)
    video = ctx.cache.get("test", ZERO_SHOT_VIDEO).pooled.float()
    with torch.no_grad():
        keys = F.normalize(heads.target_head(caption.to(device)), dim=-1)
        return (keys @ F.normalize(heads.context_head(video.to(device)), dim=-1).T).cpu()


def run_retrieval(ctx: EvalContext) -> TaskResult:
    missing = [v for v in (VIDEO_VIEW, TEXT_VIEW) if v not in ctx.cache.views]
    if missing:
        return TaskResult(skipped=f"the model has no {' or '.join(v.split(':')[1] for v in missing)} encoder")
    for split in ("train", "val", "test"):
        ctx.require_split(split, "retrieval")
    pairs = standardised_pairs(ctx)
    heads, val_score = train_heads(*pairs["train"], *pairs["val"], seed=ctx.seed)
    with torch.no_grad():
        sim = heads.similarity(*pairs["test"])
    result = TaskResult(plots={"recall": recall_curve(sim)})
    facts = load_facts(ctx.dataset, ctx.cache.plan.source("test"), ctx.vocab("actions"))
    _add_test_metrics(result, "", sim, facts, ctx.seed)
    result.add("val_mean_R1", val_score)
    zero_shot = zero_shot_similarity(ctx)
    if zero_shot is not None:
        _add_test_metrics(result, "zeroshot/", zero_shot, facts, ctx.seed)
    return result


def _add_test_metrics(result: TaskResult, prefix: str, sim: torch.Tensor, facts, seed: int) -> None:
    """The test ranking's metrics of ``sim`` (and fact-level ones where the rows carry facts), with intervals."""
    metrics = retrieval_metrics(sim)
    if facts is not None:
        metrics.update(fact_metrics(sim, facts))
    intervals = retrieval_intervals(sim, metrics, seed)
    for key, value in metrics.items():
        result.add(prefix + key, value, interval=intervals.get(key))
