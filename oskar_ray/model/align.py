"""Clip-level cross-modal contrastive term (``model.align_weight``, off by default).

Why: on the built-in benchmark the token-level video → skeleton prediction stays
near its slot-mean baseline (loss ≈ 0.95 after 1800 steps), so the video encoder
learns little pose from it, although the skeleton target features — even from a
random skeleton encoder — separate the actions perfectly (linear probe 100 %).
Asking each clip's pooled video *context* to pick out its own clip's pooled
skeleton *target* features among the batch's (symmetric InfoNCE, as CLIP) needs
only what the two modalities share — the motion — and measured the largest video
probe gain of any lever tried (docs/results.md, "Downstream: OSKAR vs random init").

The target side is the frozen-per-step EMA target encoder (no gradient), so the
term is still "predict the latent of another modality", at clip level; light
heads on both sides (an MLP on the context, a linear map on the target) keep the
encoder features free of the contrastive geometry.

With ``queue`` > 0 the target features of past batches are kept (MoCo's queue; they come from the EMA
target encoder, so they are as valid a key as this batch's) and join the negatives of the context → target
direction. Why: the batch is small (32) and the rows left after excluding clips that feed the target
modality in are fewer (~9 for text), so eight other clips are told apart by the action alone; among a
thousand keys, many share the action and only the shirt colour or the repetitions single the clip out
(docs/design.md, "Clip-level contrast").

Use::

    align = CrossModalAlignment(dim, temperature, queue=1024)
    loss = align(pooled_context, pooled_targets, rows)   # scalar, or None (fewer than two clips)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

#: buffers of the key queue, absent from checkpoints written before it existed (those start with it empty)
QUEUE_BUFFERS = ("queue", "queue_filled", "queue_next")
#: parameter prefixes of the single alignment module that checkpoints held before ``align_to`` was a list
_LEGACY = ("alignment.context_head.", "alignment.target_head.")


class CrossModalAlignment(nn.Module):
    def __init__(self, dim: int, temperature: float, queue: int = 0):
        super().__init__()
        self.temperature = temperature
        self.context_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.target_head = nn.Linear(dim, dim)
        # kept in checkpoints so a resumed run sees the keys it would have seen
        self.register_buffer("queue", torch.zeros(queue, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    def forward(self, source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """``source``: ``(B, D)`` pooled context tokens of one modality; ``target``: ``(B, D)`` pooled target-encoder
        features of the other (layer-normed and standardised over the batch here); ``rows``: ``(B,)`` the clips
        carrying both sides — the others drop out. None when fewer than two clips remain (no negatives)."""
        if int(rows.sum()) < 2:
            return None
        goal = F.layer_norm(target[rows].float(), target.shape[-1:])
        past = self.queue[: int(self.queue_filled)]
        every = torch.cat([goal, past])
        # standardised over batch and queue: what all clips share would otherwise dominate every cosine
        every = (every - every.mean(0)) / every.std(0).clamp(min=1e-4)
        queries = F.normalize(self.context_head(source[rows]), dim=-1)
        keys = F.normalize(self.target_head(every.to(source.dtype)), dim=-1)
        logits = queries @ keys.T / self.temperature  # (n, n + queued): the queued keys are negatives only
        labels = torch.arange(len(logits), device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits[:, :len(goal)].T.float(),
                                                                                labels))
        if self.training:
            self._enqueue(goal.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, goal: torch.Tensor) -> None:
        size = len(self.queue)
        if not size:
            return
        goal = goal[-size:]
        slots = (int(self.queue_next) + torch.arange(len(goal), device=goal.device)) % size
        self.queue[slots] = goal.to(self.queue.dtype)
        self.queue_next.fill_((int(self.queue_next) + len(goal)) % size)
        self.queue_filled.fill_(min(size, int(self.queue_filled) + len(goal)))


def without_queue_buffers(keys: list[str]) -> list[str]:
    """``keys`` less the alignment key-queue buffers: checkpoints from before the queue lack them, and a
    missing queue starts empty rather than failing the load."""
    def is_queue(key: str) -> bool:  # "queue" within the module, "alignment.<target>.queue" within the model
        return key.rsplit(".", 1)[-1] in QUEUE_BUFFERS and (key.startswith("alignment.") or "." not in key)

    return [k for k in keys if not is_queue(k)]


def load_legacy_alignment(alignment: nn.ModuleDict, path: str, missing: list[str],
                          unexpected: list[str]) -> tuple[list[str], list[str]]:
    """Load a pre-list checkpoint's ``alignment.*`` weights into the one aligned target now keyed by name
    (``alignment.<target>.*``), so older runs still evaluate and resume; returns what is still missing /
    unexpected."""
    legacy = [k for k in unexpected if k.startswith(_LEGACY)]
    if not legacy or len(alignment) != 1:
        return missing, unexpected
    (name, module), = alignment.items()
    weights = load_file(path)
    # not strict: those checkpoints predate the key queue, which starts empty; every parameter must load
    result = module.load_state_dict({k.removeprefix("alignment."): weights[k] for k in legacy}, strict=False)
    lacking = without_queue_buffers(result.missing_keys)
    if lacking or result.unexpected_keys:
        raise ValueError(f"{path}: alignment weights do not match (missing {lacking}, "
                         f"unexpected {result.unexpected_keys})")
    adopted = {f"alignment.{name}.{k.removeprefix('alignment.')}" for k in legacy}
    return [k for k in missing if k not in adopted], [k for k in unexpected if k not in legacy]
