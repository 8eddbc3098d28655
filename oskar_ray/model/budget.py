"""Fixed token budgets: which tokens each sample feeds in and which it predicts.

Per sample, across the modalities it carries:

1. each modality masks ``round(mask_ratio * available)`` of its tokens with
   its own style (tube, segments, spans …); the rest are *visible*;
2. the ``target_tokens`` budget is split across modalities by a symmetric
   Dirichlet(``target_alpha``) draw (4M-style: floor, hand out the remainder
   by largest fraction, clamp to what each modality can give, hand the
   shortfall to those with room) and drawn from the masked tokens;
3. the ``input_tokens`` budget gets its **own**, independent
   Dirichlet(``input_alpha``) draw and is drawn from the visible tokens not
   chosen as targets — optionally minus every token whose clip-time span is a
   target in *another* modality (``budget.exclusive``).

Independent draws (and ``cross_modal_share``, which routes part of the target
budget away from the input modalities) make many samples predict one modality
from another (docs/design.md, "Cross-modal routing").

When a sample cannot fill a budget from its preferred pool (a modality is
missing, exclusivity removed too much), the budget spills into the next pool
(targets: any available token; inputs: any available non-target token), so
every sample always yields *exactly* the budgets and batches need no padding.
If even that is impossible, a ``ValueError`` names the sample.

Everything is numpy, vectorised over the batch (loops only over modalities),
seeded by the caller's ``np.random.Generator``: it runs in the data path
(Ray Data ``map_batches``) or, as a fallback, inside ``Oskar.forward``.
Indices are global over the concatenation of the batch's modalities in
config order (see :func:`batch_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import OskarConfig
from ..modalities import Modality, modality_class


@dataclass(frozen=True)
class BudgetDraw:
    """Boolean ``(B, N)`` masks over the concatenated token axis of a batch."""

    inputs: np.ndarray
    targets: np.ndarray
    #: tokens hidden by each modality's mask_ratio/style (targets prefer these)
    masked: np.ndarray
    available: np.ndarray


@dataclass(frozen=True)
class Layout:
    """How a batch's modalities are concatenated into one token axis."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def modality_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.names)), self.sizes)


def build_modalities(cfg: OskarConfig) -> dict[str, Modality]:
    return {name: modality_class(name)(cfg.modalities[name]) for name in cfg.enabled_modalities}


def batch_layout(modalities: dict[str, Modality], batch: dict) -> Layout:
    """Enabled modalities whose key is in the batch, in config order."""
    names = tuple(n for n, m in modalities.items() if m.batch_keys[0] in batch)
    if not names:
        raise ValueError(f"batch has none of the enabled modalities' keys {list(modalities)}")
    return Layout(names, tuple(modalities[n].num_tokens for n in names))


def presence(batch: dict, name: str, batch_size: int) -> np.ndarray:
    """``(B,)`` bool from ``batch["present"][name]`` or ``present_<name>``; all True if unmarked."""
    nested = batch.get("present")
    value = nested.get(name) if isinstance(nested, dict) else batch.get(f"present_{name}")
    if value is None:
        return np.ones(batch_size, dtype=bool)
    return _numpy(value).astype(bool).reshape(batch_size)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class TokenBudgetSampler:
    def __init__(self, cfg: OskarConfig):
        self.budget = cfg.budget
        self.modalities = build_modalities(cfg)
        bins = self.budget.time_bins
        self._cover = {name: _time_cover(m.time_spans(), bins) for name, m in self.modalities.items()}

    # --- public ----------------------------------------------------------------
    def sample_batch(self, batch: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``{"input_index": (B, K), "target_index": (B, T)}`` int64 for a batch dict."""
        layout = batch_layout(self.modalities, batch)
        first_key = self.modalities[layout.names[0]].batch_keys[0]
        batch_size = len(batch[first_key])
        available = {
            name: self.modalities[name].available(batch, presence(batch, name, batch_size))
            for name in layout.names
        }
        draw = self.sample(available, layout, rng)
        return {
            "input_index": _row_indices(draw.inputs, self.budget.input_tokens, "input_tokens"),
            "target_index": _row_indices(draw.targets, self.budget.target_tokens, "target_tokens"),
        }

    def sample(
        self, available: dict[str, np.ndarray], layout: Layout, rng: np.random.Generator
    ) -> BudgetDraw:
        """Draw inputs and targets given each modality's ``(B, N_m)`` available tokens."""
        avail = np.concatenate([available[n] for n in layout.names], axis=1)
        masked = np.concatenate(
            [self._mask(n, available[n], rng) for n in layout.names], axis=1
        )
        present = np.stack([available[n].any(axis=1) for n in layout.names], axis=1)
        _check_samples(present, avail, self.budget.input_tokens + self.budget.target_tokens, layout)

        w_input = self._weights(self.budget.input_weights, layout)
        w_target = self._weights(self.budget.target_weights, layout)
        p_input = _dirichlet(self.budget.input_alpha, present, rng, w_input)
        p_target = _route_away(_dirichlet(self.budget.target_alpha, present, rng, w_target), p_input,
                               self.budget.cross_modal_share)
        modality_of_token = layout.modality_of_token
        targets = _draw(p_target, self.budget.target_tokens, [masked, avail], modality_of_token, rng)

        non_target = avail & ~targets
        preferred = non_target & ~masked
        pools = [preferred]
        if self.budget.exclusive:
            pools = [preferred & ~self._excluded(targets, layout), preferred]
        inputs = _draw(p_input, self.budget.input_tokens, [*pools, non_target], modality_of_token, rng)
        return BudgetDraw(inputs=inputs, targets=targets, masked=masked, available=avail)

    # --- steps -----------------------------------------------------------------
    @staticmethod
    def _weights(weights: dict[str, float], layout: Layout) -> np.ndarray:
        return np.array([float(weights.get(n, 1.0)) for n in layout.names])

    def _mask(self, name: str, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        modality = self.modalities[name]
        scores = np.where(available, modality.mask_scores(len(available), rng), -np.inf)
        n_masked = np.round(modality.cfg.mask_ratio * available.sum(axis=1)).astype(int)
        return _rank_descending(scores) < n_masked[:, None]

    def _excluded(self, targets: np.ndarray, layout: Layout) -> np.ndarray:
        """Tokens whose time span is a target in another modality."""
        cover = np.concatenate([self._cover[n] for n in layout.names], axis=0)  # (N, bins)
        onehot = np.eye(len(layout.names), dtype=bool)[layout.modality_of_token]  # (N, M)
        # target_bins[b, m, bin]: modality m has a target covering that bin
        target_bins = np.einsum("bn,nm,nk->bmk", targets.astype(np.float32), onehot, cover) > 0
        by_others = target_bins.sum(axis=1, keepdims=True) - target_bins  # (B, M, bins)
        blocked = by_others[:, layout.modality_of_token, :] > 0  # (B, N, bins)
        return (blocked & cover[None]).any(axis=2)


def _time_cover(spans: np.ndarray, bins: int) -> np.ndarray:
    """``(N, bins)`` bool: which clip-time bins each token overlaps."""
    edges = np.arange(bins) / bins
    start, end = spans[:, :1], spans[:, 1:]
    with np.errstate(invalid="ignore"):
        cover = (start < edges[None, :] + 1.0 / bins) & (end > edges[None, :])
    return cover & ~np.isnan(start)


def _rank_descending(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


def _dirichlet(alpha: float, present: np.ndarray, rng: np.random.Generator,
               weights: np.ndarray | None = None) -> np.ndarray:
    """Symmetric Dirichlet over each sample's present modalities (zeros elsewhere), times ``weights``.

    A sample whose present modalities all weigh 0 falls back to an even split
    over what it has, so a budget is never left unfillable.
    """
    gamma = rng.standard_gamma(alpha, size=present.shape) * present
    if weights is not None:
        gamma = gamma * weights[None, :]
    total = gamma.sum(axis=1, keepdims=True)
    # tiny alphas can underflow every gamma to 0: fall back to an even split
    uniform = present / np.maximum(present.sum(axis=1, keepdims=True), 1)
    return np.where(total > 0, gamma / np.where(total > 0, total, 1.0), uniform)


def _route_away(p_target: np.ndarray, p_input: np.ndarray, share: float) -> np.ndarray:
    if share == 0.0:
        return p_target
    away = p_target * (1.0 - p_input)
    total = away.sum(axis=1, keepdims=True)
    away = np.where(total > 0, away / np.where(total > 0, total, 1.0), p_target)
    return (1.0 - share) * p_target + share * away


def _allot(p: np.ndarray, total: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Integer split of ``total`` (B,) by proportions ``p`` (B, M), clamped to ``cap``."""
    raw = p * total[:, None]
    counts = np.floor(raw).astype(np.int64)
    remainder = total - counts.sum(axis=1)
    counts += _rank_descending(raw - counts) < remainder[:, None]
    counts = np.minimum(counts, cap)
    shortfall = total - counts.sum(axis=1)
    rows = np.arange(len(p))
    for m in np.argsort(-p, axis=1, kind="stable").T:  # biggest shares get the overflow first
        give = np.minimum(cap[rows, m] - counts[rows, m], shortfall)
        counts[rows, m] += give
        shortfall -= give
    return counts


def _draw(
    p: np.ndarray,
    budget: int,
    pools: list[np.ndarray],
    modality_of_token: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pick ``budget`` tokens per sample, split by ``p``, preferring earlier pools.

    ``pools`` are nested (each a superset of the one before); a pool's capacity
    is used up before the budget spills into the next.
    """
    n_modalities = p.shape[1]
    counts = np.zeros_like(p, dtype=np.int64)
    for pool in pools:
        cap = _per_modality(pool, modality_of_token, n_modalities) - counts
        missing = budget - counts.sum(axis=1)
        counts += _allot(p, missing, cap)
    # rank each token within its modality: earlier pool first, random within a pool
    penalty = sum((~pool).astype(np.float64) for pool in pools)
    key = modality_of_token[None, :] * (len(pools) + 2.0) + penalty + rng.random(pools[0].shape)
    rank = _rank_descending(-key)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(modality_of_token, minlength=n_modalities))])
    rank_in_modality = rank - offsets[modality_of_token][None, :]
    chosen = rank_in_modality < np.take_along_axis(counts, modality_of_token[None, :].repeat(len(p), 0), 1)
    return chosen & pools[-1]


def _per_modality(mask: np.ndarray, modality_of_token: np.ndarray, n_modalities: int) -> np.ndarray:
    onehot = np.eye(n_modalities, dtype=np.int64)[modality_of_token]
    return mask.astype(np.int64) @ onehot


def _check_samples(present: np.ndarray, avail: np.ndarray, needed: int, layout: Layout) -> None:
    have = avail.sum(axis=1)
    short = np.flatnonzero(have < needed)
    if short.size:
        b = int(short[0])
        carried = [n for n, on in zip(layout.names, present[b], strict=True) if on] or ["none"]
        raise ValueError(
            f"sample {b} of the batch has {int(have[b])} tokens across its modalities "
            f"({', '.join(carried)}) but budget.input_tokens + budget.target_tokens = {needed}; "
            f"{short.size} sample(s) in this batch are too small"
        )


def _row_indices(chosen: np.ndarray, budget: int, name: str) -> np.ndarray:
    counts = chosen.sum(axis=1)
    if not (counts == budget).all():
        b = int(np.flatnonzero(counts != budget)[0])
        raise ValueError(f"sample {b}: drew {int(counts[b])} tokens for budget.{name}={budget}")
    return np.nonzero(chosen)[1].reshape(len(chosen), budget).astype(np.int64)
