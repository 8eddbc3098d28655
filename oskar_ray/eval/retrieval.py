"""Video–text retrieval: two light projection heads on frozen features, symmetric InfoNCE.

Runbook::

    result = run_retrieval(ctx)
    result.metrics["t2v/R1"], result.metrics["v2t/medR"]

Frozen pooled features of the video target encoder and the text target
encoder (each clip's first caption) on the train split train one linear
projection per side with a symmetric InfoNCE loss (CLIP-style, learned
temperature), full batch; on test every caption ranks every clip (t2v) and
vice versa (v2t): Recall@1/5/10 (%) and median rank (1 = perfect).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import EvalContext, TaskResult
from .probes import single_threaded

PROJ_DIM = 128
RETRIEVAL_STEPS = 300
RETRIEVAL_LR = 3e-3
RECALL_AT = (1, 5, 10)
VIDEO_VIEW, TEXT_VIEW = "target:video", "target:text"


class ProjectionHeads(nn.Module):
    def __init__(self, video_dim: int, text_dim: int, dim: int = PROJ_DIM):
        super().__init__()
        self.video = nn.Sequential(nn.LayerNorm(video_dim), nn.Linear(video_dim, dim))
        self.text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.log_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature

    def similarity(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(n_text, n_video)`` cosine similarities of the projections."""
        return F.normalize(self.text(text.float()), dim=1) @ F.normalize(self.video(video.float()), dim=1).T


def info_nce(sim: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i's positive is column i, in both directions."""
    logits = sim * log_scale.clamp(max=4.6).exp()  # temperature floor 0.01, as in CLIP
    target = torch.arange(len(sim))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@single_threaded
def train_heads(video: torch.Tensor, text: torch.Tensor, steps: int = RETRIEVAL_STEPS,
                seed: int = 0) -> ProjectionHeads:
    if len(video) != len(text):
        raise ValueError(f"retrieval: {len(video)} video rows but {len(text)} text rows")
    torch.manual_seed(seed)
    heads = ProjectionHeads(video.shape[1], text.shape[1])
    opt = torch.optim.AdamW(heads.parameters(), lr=RETRIEVAL_LR, weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        info_nce(heads.similarity(video, text), heads.log_scale).backward()
        opt.step()
    return heads


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


def recall_curve(sim: torch.Tensor, max_k: int = 50) -> dict[str, list[float]]:
    """Recall@K for K = 1..max_k in both directions (the report's plot)."""
    curve = {}
    for name, matrix in (("t2v", sim), ("v2t", sim.T)):
        r = ranks(matrix)
        curve[name] = [float((r <= k).float().mean() * 100) for k in range(1, min(max_k, len(r)) + 1)]
    return curve


def run_retrieval(ctx: EvalContext) -> TaskResult:
    if TEXT_VIEW not in ctx.cache.views or VIDEO_VIEW not in ctx.cache.views:
        return TaskResult()  # the model lacks text or video
    ctx.require_split("train", "retrieval")
    ctx.require_split("test", "retrieval")
    train_v, train_t = ctx.cache.get("train", VIDEO_VIEW), ctx.cache.get("train", TEXT_VIEW)
    heads = train_heads(train_v.pooled, train_t.pooled, seed=ctx.seed)
    test_v, test_t = ctx.cache.get("test", VIDEO_VIEW), ctx.cache.get("test", TEXT_VIEW)
    with torch.no_grad():
        sim = heads.similarity(test_v.pooled, test_t.pooled)
    return TaskResult(metrics=retrieval_metrics(sim), plots={"recall": recall_curve(sim)})
