"""Frozen-feature probes: linear (LR sweep on val), kNN (cosine), attentive (V-JEPA).

Runbook::

    res = linear_probe(x_train, y_train, x_val, y_val, x_test, y_test, n_classes)
    res.top1, res.top5, res.logits         # test metrics + test logits (confusion matrix)
    knn_probe(x_train, y_train, x_test, y_test, n_classes, k=20)
    attentive_probe(tok_train, valid_train, y_train, tok_val, ..., n_classes, epochs=60)

All probes train on cached features only (the encoder never runs here), pick
their hyper-parameters on val and report on test, and are deterministic for a
given ``seed``. Full-batch Adam for the linear probe (hundreds of steps on a
few thousand rows cost milliseconds); mini-batch AdamW for the attentive probe.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

#: learning rates x weight decays swept by the linear probe (chosen on val top-1). With ~40 clips per
#: class the L2 penalty matters as much as the LR: weight decay 0.1 lifted a random-init encoder's
#: video probe 31 -> 35 % and a pretrained one's 55 -> 59.5 % (tiny_pose, 500 train clips)
LINEAR_LRS = (1e-3, 1e-2, 1e-1)
LINEAR_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
LINEAR_STEPS = 200
#: logits (rows x heads x classes) the linear probe's heads trained together may hold: 2**26 floats, 256 MB
LINEAR_BATCH_ELEMENTS = 2**26
#: learning rates swept by the attentive probe; the low end is for weak (e.g. random-init) features,
#: which need small steps: 3e-3/1e-2 alone read a random encoder's video tokens at 25.5-31.5 %,
#: 3e-4 with 60 epochs at 33.5-39.5 % (three init seeds), while pretrained features barely move
ATTENTIVE_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
ATTENTIVE_BATCH = 64
KNN_TEMPERATURE = 0.07


T = TypeVar("T")


def single_threaded(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with one intra-op thread, restoring the previous count.

    Probe matrices are tiny, so threads buy nothing; on a busy 2-core machine
    OpenMP's spin-waiting made one 128-d logistic regression take 30-47 s with
    2 threads versus 0.5 s with 1 (measured while another job used the cores).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


@dataclass
class ProbeResult:
    top1: float
    top5: float
    logits: torch.Tensor
    val_top1: float = float("nan")
    lr: float = float("nan")
    weight_decay: float = float("nan")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores (k clipped to the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean())


def train_moments(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored: a constant dimension must not divide by zero)."""
    train = train.float()
    return train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp(min=1e-6)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """z-score with train statistics (the probes are scale-sensitive; encoders differ in scale)."""
    mean, std = train_moments(train)
    return [(x.float() - mean) / std for x in (train, *others)]


def _check(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} feature rows but {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{name}: no rows")


def _fit_linear_heads(x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: list[tuple[float, float]],
                      seed: int) -> list[nn.Linear]:
    """One logistic regression per (LR, weight decay) of ``settings``, all from the same seeded init, trained
    together: one matmul gives every head's logits and one Adam holds a parameter group per head. The summed
    loss leaves each head its own gradient, so each is the fit it would be alone (to float rounding); 200
    full-batch steps of 12 heads cost ~0.65 s instead of ~2.1 s one head at a time (Python overhead). Heads
    trained together hold rows x heads x classes logits (and gradients): they go in groups under
    :data:`LINEAR_BATCH_ELEMENTS`, so a large evaluation (240k clips x 400 classes) does not need 12x the memory
    of one head."""
    per_group = max(1, LINEAR_BATCH_ELEMENTS // max(1, len(x) * n_classes))
    return [head for start in range(0, len(settings), per_group)
            for head in _fit_head_group(x, y, n_classes, settings[start:start + per_group], seed)]


def _fit_head_group(x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: list[tuple[float, float]],
                    seed: int) -> list[nn.Linear]:
    heads = []
    for _ in settings:
        torch.manual_seed(seed)
        heads.append(nn.Linear(x.shape[1], n_classes))
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": lr, "weight_decay": decay}
                            for head, (lr, decay) in zip(heads, settings, strict=True)])
    targets = y.repeat_interleave(len(heads))  # row n's label for each head's logits of row n
    for _ in range(LINEAR_STEPS):
        opt.zero_grad()
        weight, bias = torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads])
        logits = F.linear(x, weight, bias).view(len(x) * len(heads), n_classes)
        F.cross_entropy(logits, targets, reduction="sum").div(len(x)).backward()  # = the heads' mean losses, summed
        opt.step()
    return heads


@dataclass
class LinearModel:
    """A fitted linear probe: train-set standardisation + the linear layer."""

    mean: torch.Tensor
    std: torch.Tensor
    head: nn.Linear
    val_top1: float
    lr: float
    weight_decay: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head((x.float() - self.mean) / self.std)


@single_threaded
def fit_linear(x_train, y_train, x_val, y_val, n_classes: int, seed: int = 0,
               lrs: tuple[float, ...] = LINEAR_LRS) -> LinearModel:
    """Logistic regression on standardised features; the (LR, weight decay) with the best val top-1 wins."""
    _check(x_train, y_train, "linear probe train")
    _check(x_val, y_val, "linear probe val")
    mean, std = train_moments(x_train)
    scaled = (x_train.float() - mean) / std
    best: LinearModel | None = None
    settings = list(itertools.product(lrs, LINEAR_WEIGHT_DECAYS))
    for (lr, decay), head in zip(settings, _fit_linear_heads(scaled, y_train, n_classes, settings, seed),
                                 strict=True):
        model = LinearModel(mean, std, head, float("nan"), lr, decay)
        model.val_top1 = topk_accuracy(model(x_val), y_val, 1)
        if best is None or model.val_top1 > best.val_top1:
            best = model
    assert best is not None
    return best


def linear_probe(x_train, y_train, x_val, y_val, x_test, y_test, n_classes: int, seed: int = 0,
                 lrs: tuple[float, ...] = LINEAR_LRS) -> ProbeResult:
    """Fit on train, select on val, score on test (top-1, top-5)."""
    _check(x_test, y_test, "linear probe test")
    model = fit_linear(x_train, y_train, x_val, y_val, n_classes, seed, lrs)
    logits = model(x_test)
    return ProbeResult(topk_accuracy(logits, y_test, 1), topk_accuracy(logits, y_test, 5), logits,
                       model.val_top1, model.lr, model.weight_decay)


@single_threaded
def knn_scores(x_train, y_train, x_query, n_classes: int, k: int = 20,
               temperature: float = KNN_TEMPERATURE, exclude_self: bool = False) -> torch.Tensor:
    """Class scores of a cosine kNN with exp(sim / T) weighted votes (as in DINO's kNN eval).

    ``exclude_self``: the query *is* the train set (row i of each), and a row may not vote for itself —
    the leave-one-out probe of pretraining (:mod:`oskar_ray.probes.online`).
    """
    if exclude_self and x_query is not x_train and not torch.equal(x_query, x_train):
        raise ValueError("knn_scores(exclude_self=True) scores a set against itself: pass the same features twice")
    train = F.normalize(x_train.float(), dim=1)
    query = F.normalize(x_query.float(), dim=1)
    sims = query @ train.T
    if exclude_self:
        sims.fill_diagonal_(-float("inf"))
    k = min(k, len(train) - int(exclude_self))
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(query), n_classes)
    votes.scatter_add_(1, y_train[idx], (top / temperature).exp())
    return votes


def knn_probe(x_train, y_train, x_test, y_test, n_classes: int, k: int = 20) -> ProbeResult:
    _check(x_train, y_train, "kNN train")
    _check(x_test, y_test, "kNN test")
    scores = knn_scores(x_train, y_train, x_test, n_classes, k)
    return ProbeResult(topk_accuracy(scores, y_test, 1), topk_accuracy(scores, y_test, 5), scores)


class AttentiveHead(nn.Module):
    """One learned query cross-attends the frozen tokens; LayerNorm + linear classifier (V-JEPA)."""

    def __init__(self, dim: int, n_classes: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_in = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keys = self.norm_in(tokens.float())
        # a row without valid tokens (modality absent) attends everywhere rather than producing NaN
        valid = valid | ~valid.any(dim=1, keepdim=True)
        query = self.query.expand(len(tokens), -1, -1)
        pooled, _ = self.attn(query, keys, keys, key_padding_mask=~valid, need_weights=False)
        return self.head(self.norm_out(pooled[:, 0]))


@single_threaded
def predict_attentive(head: nn.Module, *inputs: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits of a token head over per-row ``inputs`` (tokens, valid[, more]) in chunks."""
    head.eval()
    with torch.no_grad():
        return torch.cat([head(*(x[i:i + batch] for x in inputs)) for i in range(0, len(inputs[0]), batch)])


def fit_head(head: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, lr: float, epochs: int,
             seed: int, progress: bool = False, weight_decay: float = 0.05) -> nn.Module:
    """Mini-batch AdamW with a cosine schedule: ``head(*inputs[rows])`` -> logits, cross-entropy on ``labels``."""
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(labels) // ATTENTIVE_BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in tqdm(range(epochs), desc=f"{type(head).__name__} lr={lr:g}", disable=not progress, leave=False):
        head.train()
        for idx in torch.randperm(len(labels), generator=generator).split(ATTENTIVE_BATCH):
            opt.zero_grad()
            F.cross_entropy(head(*(x[idx] for x in inputs)), labels[idx]).backward()
            opt.step()
            sched.step()
    return head


@single_threaded
def select_head(make_head: Callable[[], nn.Module], train: tuple, val: tuple, epochs: int, seed: int = 0,
                progress: bool = False, lrs: tuple[float, ...] = ATTENTIVE_LRS) -> tuple[nn.Module, float]:
    """The head (fresh from ``make_head`` per LR, seeded) with the best val top-1 over ``lrs``, and that top-1.
    ``train`` / ``val`` are ``(*inputs, labels)``."""
    for part, name in ((train, "train"), (val, "val")):
        _check(part[0], part[-1], f"{name} rows")
    best: tuple[nn.Module, float] | None = None
    for lr in lrs:
        torch.manual_seed(seed)
        head = fit_head(make_head(), train[:-1], train[-1], lr, epochs, seed, progress)
        val_top1 = topk_accuracy(predict_attentive(head, *val[:-1]), val[-1], 1)
        if best is None or val_top1 > best[1]:
            best = (head, val_top1)
    assert best is not None
    return best


def fit_attentive(train: tuple, val: tuple, n_classes: int, epochs: int = 60, seed: int = 0,
                  progress: bool = False, lrs: tuple[float, ...] = ATTENTIVE_LRS) -> tuple[AttentiveHead, float]:
    """The attentive head with the best val top-1 over ``lrs`` and that top-1."""
    dim = train[0].shape[-1]
    return select_head(lambda: AttentiveHead(dim, n_classes), train, val, epochs, seed, progress, lrs)


def attentive_probe(train: tuple, val: tuple, test: tuple, n_classes: int, epochs: int = 60, seed: int = 0,
                    progress: bool = False, lrs: tuple[float, ...] = ATTENTIVE_LRS) -> ProbeResult:
    """``train``/``val``/``test`` are ``(tokens (N, T, D), valid (N, T), labels (N,))``."""
    _check(test[0], test[2], "attentive probe test")
    head, val_top1 = fit_attentive(train, val, n_classes, epochs, seed, progress, lrs)
    logits = predict_attentive(head, test[0], test[1])
    return ProbeResult(topk_accuracy(logits, test[2], 1), topk_accuracy(logits, test[2], 5), logits, val_top1)


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted."""
    matrix = torch.zeros(n_classes, n_classes, dtype=torch.long)
    matrix.index_put_((labels, logits.argmax(1)), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    return matrix
