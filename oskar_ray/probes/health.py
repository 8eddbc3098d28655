"""Representation health: RankMe and per-dimension std of a feature matrix.

RankMe (Garrido et al., 2023) is the exponential of the entropy of the
normalised singular values: ~D for well-spread features, ~1 under collapse.
Both are cheap enough to compute on a held-out batch during pretraining.
"""

from __future__ import annotations

import torch


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of ``(N, D)`` features."""
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum().clamp(min=eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised features."""
    normed = torch.nn.functional.normalize(features.double(), dim=1)
    return float(normed.std(dim=0).mean())


def health_metrics(model, batch: dict) -> dict[str, float]:
    """``health/<modality>/rankme`` and ``health/<modality>/std`` of target-encoder features."""
    from ..model.budget import batch_layout, presence

    out = {}
    for name in batch_layout(model.modalities, batch).names:
        feats = model.encode(batch, [name], encoder="target")
        present = torch.as_tensor(presence(batch, name, len(feats)), device=feats.device)
        if int(present.sum()) < 2:
            continue
        feats = feats[present]
        out[f"health/{name}/rankme"] = rankme(feats)
        out[f"health/{name}/std"] = feature_std(feats)
    return out


def features_health(features: dict[str, torch.Tensor]) -> dict[str, float]:
    """``<name>/rankme`` and ``<name>/std`` for each ``(N, D)`` matrix (e.g. test features per view)."""
    out = {}
    for name, feats in features.items():
        if len(feats) < 2:
            continue
        out[f"{name}/rankme"] = rankme(feats)
        out[f"{name}/std"] = feature_std(feats)
    return out
