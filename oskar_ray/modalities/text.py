"""Text: token ids ``(B, L)`` + padding mask → embeddings with 1D sin-cos positions.

Ids come from a real tokenizer (a ``transformers.PreTrainedTokenizerFast``
trained locally and saved with the dataset); ``vocab_size`` must cover it and
``pad_id`` must be its padding id. Padding tokens are never inputs or targets,
and the target encoder masks them out of attention.

Masking styles: ``random``; ``spans`` — contiguous runs of ``span_len`` tokens
(with a random offset per sample), so a whole word piece group must be inferred.
Text has no clip-time extent: it never takes part in exclusivity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import Modality, ModalityConfig, ModalityTokenizer, grouped_scores, register_modality
from .positions import sincos_1d

#: ids below this are reserved for special tokens in the example generator
_FIRST_WORD_ID = 5


@dataclass
class TextConfig(ModalityConfig):
    max_len: int = 24
    vocab_size: int = 1024
    pad_id: int = 0
    span_len: int = 3
    masking: str = "spans"


@register_modality
class Text(Modality):
    name = "text"
    config_class = TextConfig
    masking_styles = ("random", "spans")
    batch_keys = ("text_ids", "text_mask")

    @property
    def num_tokens(self) -> int:
        return self.cfg.max_len

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        c = self.cfg
        for field in ("max_len", "vocab_size", "span_len"):
            if getattr(c, field) <= 0:
                raise ValueError(f"{prefix}.{field} must be positive, got {getattr(c, field)}")
        if not 0 <= c.pad_id < c.vocab_size:
            raise ValueError(f"{prefix}.pad_id must be in [0, vocab_size), got {c.pad_id}")
        if c.vocab_size <= _FIRST_WORD_ID:
            raise ValueError(f"{prefix}.vocab_size must exceed {_FIRST_WORD_ID}, got {c.vocab_size}")

    def time_spans(self) -> np.ndarray:
        return np.full((self.num_tokens, 2), np.nan)

    def available(self, batch: dict, present: np.ndarray) -> np.ndarray:
        mask = np.asarray(batch["text_mask"], dtype=bool)
        return mask & present[:, None]

    def mask_scores(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.cfg.masking == "random":
            return rng.random((batch_size, self.num_tokens))
        span = self.cfg.span_len
        offset = rng.integers(0, span, size=(batch_size, 1))
        span_of_token = (np.arange(self.num_tokens)[None, :] + offset) // span
        return grouped_scores(span_of_token, batch_size, rng)

    def example(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Arithmetic progressions of ids: a masked id follows from its neighbours."""
        c = self.cfg
        words = c.vocab_size - _FIRST_WORD_ID
        start = torch.randint(0, words, (batch_size, 1), generator=generator)
        step = torch.randint(1, 4, (batch_size, 1), generator=generator)
        ids = _FIRST_WORD_ID + (start + step * torch.arange(c.max_len)) % words
        lengths = torch.randint(max(1, c.max_len // 2), c.max_len + 1, (batch_size, 1), generator=generator)
        mask = torch.arange(c.max_len)[None, :] < lengths
        return {"text_ids": ids.masked_fill(~mask, c.pad_id), "text_mask": mask}

    def blank(self, batch: dict, absent: torch.Tensor) -> None:
        batch["text_ids"] = batch["text_ids"].masked_fill(absent[:, None], self.cfg.pad_id)
        batch["text_mask"] = batch["text_mask"] & ~absent[:, None]

    def build_tokenizer(self, dim: int) -> ModalityTokenizer:
        return TextTokenizer(self, dim)


class TextTokenizer(ModalityTokenizer):
    def __init__(self, modality: Text, dim: int):
        super().__init__(dim)
        c = modality.cfg
        self.embedding = nn.Embedding(c.vocab_size, dim, padding_idx=c.pad_id)
        nn.init.trunc_normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[c.pad_id].zero_()
        self.register_buffer("positions", sincos_1d(torch.arange(c.max_len), dim), persistent=False)

    def embed(self, batch: dict) -> torch.Tensor:
        return self.embedding(batch["text_ids"])

    def position_embedding(self) -> torch.Tensor:
        return self.positions

    def valid_mask(self, batch: dict) -> torch.Tensor:
        return batch["text_mask"]
