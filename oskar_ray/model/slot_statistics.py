"""Per-slot target statistics (``model.target_norm="slot"``): the running mean and scale of each token slot's
target latents, updated from the batch's target tokens alone (``Oskar._targets``)."""

from __future__ import annotations

import torch
from torch import nn


class SlotStatistics(nn.Module):
    """Running per-slot mean and scale of the target latents (``model.target_norm="slot"``).

    After layer norm, most of a skeleton or text target is the same for every
    sample at that slot (it encodes the joint/time or word position: 73 % and
    99.7 % of the variance at init on SynthAction). A predictor can then drive
    the loss down from slot embeddings alone without reading its inputs.
    Centring each slot on its running mean and dividing by its running RMS
    leaves only what differs between samples, which has to come from the inputs.
    Statistics are updated in training mode from the slots that are targets.
    """

    def __init__(self, slots: int, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        # start as plain layer norm (mean 0, scale 1) and move towards the statistics
        self.register_buffer("mean", torch.zeros(slots, dim))
        self.register_buffer("scale", torch.ones(slots))

    @torch.no_grad()
    def forward(self, targets: torch.Tensor, slots: torch.Tensor, update: bool) -> torch.Tensor:
        """``targets`` ``(B, T, D)`` (layer-normed), ``slots`` ``(B, T)``: each target's row in the statistics."""
        if update:
            self._update(targets.reshape(-1, targets.shape[-1]), slots.reshape(-1))
        return (targets - self.mean[slots]) / self.scale[slots, None]

    def _update(self, targets: torch.Tensor, slots: torch.Tensor) -> None:
        # per-slot sums by index_add_, which adds in index order on CPU: same-seed runs stay bit-identical
        targets = targets.to(self.mean.dtype)
        count = torch.bincount(slots, minlength=len(self.scale)).to(targets.dtype)
        keep = 1.0 - (1.0 - self.momentum) * (count > 0).float()  # slots without targets keep their stats
        mean = torch.zeros_like(self.mean).index_add_(0, slots, targets) / count.clamp(min=1)[:, None]
        self.mean.copy_(keep[:, None] * self.mean + (1 - keep[:, None]) * mean)
        # a spread needs two samples; the floor keeps a near-constant slot from being blown up
        residual = (targets - self.mean[slots]).pow(2).mean(-1)
        rms = (torch.zeros_like(self.scale).index_add_(0, slots, residual) / count.clamp(min=1)).sqrt().clamp(min=0.1)
        keep = torch.where(count > 1, keep, torch.ones_like(keep))
        self.scale.copy_(keep * self.scale + (1 - keep) * rms)
