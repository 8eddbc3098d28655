"""Anti-collapse regulariser on the context features (``model.var_weight`` / ``model.cov_weight``).

Why: an EMA-target JEPA only rules out *total* collapse. On the built-in
benchmark the video targets drift toward what is cheap to predict (background
colour, texture) and the pose information — the part the action probe needs —
fades: the video probe falls below random init while the video loss reaches
≈ 0.05. Keeping every feature dimension varying *across clips* (VICReg's
variance hinge) and the dimensions decorrelated (its covariance term) makes
that shortcut expensive. Both terms act on the fusion encoder's per-sample,
per-modality mean of its input tokens, i.e. on the quantity a pooled probe
reads; the target encoders follow through the EMA.

Use::

    terms = variance_covariance_terms(fused, input_modality, n_modalities)   # {"var": ..., "cov": ...}
    loss = loss + var_weight * terms["var"] + cov_weight * terms["cov"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def variance_covariance_terms(fused: torch.Tensor, input_modality: torch.Tensor, n_modalities: int,
                              floor: float = 1.0) -> dict[str, torch.Tensor]:
    """Variance hinge and off-diagonal covariance of per-modality pooled context features.

    ``fused``: ``(B, N, D)`` context tokens; ``input_modality``: ``(B, N)`` the
    modality index of each; modalities with fewer than 2 carrying samples in
    the batch contribute nothing. Returns the means over modalities.
    """
    var_terms, cov_terms = [], []
    fused = fused.float()
    for m in range(n_modalities):
        pooled = _pooled(fused, input_modality == m)
        if pooled.shape[0] < 2:
            continue
        centred = pooled - pooled.mean(0)
        cov = centred.T @ centred / (pooled.shape[0] - 1)
        variance = torch.diagonal(cov)
        var_terms.append(F.relu(floor - torch.sqrt(variance + 1e-4)).mean())
        cov_terms.append((cov.pow(2).sum() - variance.pow(2).sum()) / pooled.shape[1])
    zero = fused.new_zeros((), dtype=torch.float32)
    return {"var": torch.stack(var_terms).mean() if var_terms else zero,
            "cov": torch.stack(cov_terms).mean() if cov_terms else zero}


def _pooled(fused: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """``(B', D)`` mean of each sample's tokens of one modality, samples without any dropped."""
    counts = mine.sum(1)
    sums = (fused * mine[..., None]).sum(1)
    keep = counts > 0
    return sums[keep] / counts[keep, None]
