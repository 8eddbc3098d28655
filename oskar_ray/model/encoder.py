"""The encoder: modality tokenizers + one ViT over whatever tokens it is given.

The fusion encoder holds every enabled modality's tokenizer and sees the
budgeted visible tokens of all modalities together. A target encoder is an EMA
copy of it restricted to one modality's tokenizer (or all of them, when one
shared target encoder serves every modality).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import ModelConfig
from ..modalities import Modality
from .blocks import Transformer, init_weights


class Encoder(nn.Module):
    def __init__(self, modalities: dict[str, Modality], cfg: ModelConfig):
        super().__init__()
        self.tokenizers = nn.ModuleDict({n: m.build_tokenizer(cfg.dim) for n, m in modalities.items()})
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias)
        self.apply(init_weights)

    def tokenize(self, batch: dict, names: tuple[str, ...]) -> torch.Tensor:
        """All tokens of ``names`` concatenated in that order: ``(B, sum N_m, D)``."""
        return torch.cat([self.tokenizers[n](batch) for n in names], dim=1)

    def valid_mask(self, batch: dict, names: tuple[str, ...]) -> torch.Tensor | None:
        """``(B, N)`` of real tokens (padding excluded), or None when all are real."""
        masks = [self.tokenizers[n].valid_mask(batch) for n in names]
        if all(m is None for m in masks):
            return None
        sizes = [self.tokenizers[n].position_embedding().shape[0] for n in names]
        first = next(m for m in masks if m is not None)
        full = [
            m if m is not None else torch.ones(first.shape[0], s, dtype=torch.bool, device=first.device)
            for m, s in zip(masks, sizes, strict=True)
        ]
        return torch.cat(full, dim=1)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is None or bool(valid.all()):
            return self.transformer(tokens)
        # a sample with no valid token (modality absent) attends everywhere instead of NaN
        keys = valid | ~valid.any(dim=1, keepdim=True)
        return self.transformer(tokens, keys[:, None, None, :])

    def restricted_copy(self, names: tuple[str, ...]) -> Encoder:
        """A frozen deep copy keeping only the tokenizers of ``names``."""
        clone = copy.deepcopy(self)
        for name in list(clone.tokenizers):
            if name not in names:
                del clone.tokenizers[name]
        clone.requires_grad_(False)
        return clone
