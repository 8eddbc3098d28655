"""What every modality provides, and the registry that knows them all.

A modality is one file that defines

* a config dataclass (subclass of :class:`ModalityConfig`): its shapes and masking;
* a :class:`Modality` subclass: batch keys, token count, per-token time spans,
  masking scores, an example-data generator and the tokenizer module that maps
  raw input to ``(B, N, D)`` tokens (position + modality embedding included);
* a ``register_modality(...)`` call.

Adding audio, depth or an IMU is exactly that: one new file, imported once (see
``oskar_ray/modalities/__init__.py`` for the built-ins; list your module under
``plugins:`` in the config, or register from your own code before loading a
config). For its data to be stored and streamed, a new modality also gives
``file_suffixes`` + ``read_file`` (``oskar data ingest --modality NAME=DIR``
stores each file's bytes in the dataset's ``NAME`` column) and ``decode`` (those
bytes → its batch arrays, in Ray Data's preprocessing); the built-ins' richer
data paths (frame sizes, tokenizer, annotations) live in ``oskar_ray/data``.
A class registered in the driver reaches Ray's worker processes with the work
sent there (:func:`carried_modalities`), by value when it has no importable
module (a test, a notebook).

Masking scores are numpy (they run in the data path, on CPU, per batch): a
higher score means "masked earlier". Structure (tubes, blocks, segments, spans)
comes from giving whole groups of tokens the same random score; the number of
masked tokens is then exact per sample (``round(mask_ratio * available)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

_REGISTRY: dict[str, type[Modality]] = {}
#: the modalities with their own data paths in oskar_ray/data (store columns, readers, preprocessing)
BUILTIN_MODALITIES = ("video", "skeleton", "text")
#: names an added modality or its batch keys may not take: the built-ins' batch keys, labels, masks, views
RESERVED_NAMES = frozenset({
    *BUILTIN_MODALITIES, "text_ids", "text_mask", "question", "question_ids", "question_mask", "action", "answer",
    "question_type", "segment", "present", "input_index", "target_index", "fusion", "clip", "attributes", "id",
    "skipped_video", "padded_video"})


@dataclass
class ModalityConfig:
    """Fields every modality has; subclasses add their shapes."""

    enabled: bool = True
    mask_ratio: float = 0.5
    masking: str = "random"


class Modality:
    """Static knowledge about one modality, built from its config."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModalityConfig]] = ModalityConfig
    masking_styles: ClassVar[tuple[str, ...]] = ("random",)
    #: keys this modality reads from a batch; the first one marks its presence
    batch_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ModalityConfig):
        self.cfg = cfg

    # --- shape knowledge -------------------------------------------------
    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    def time_spans(self) -> np.ndarray:
        """``(N, 2)`` float [start, end) of each token in clip time, in [0, 1].

        Tokens with no temporal extent (e.g. text) return ``[nan, nan]`` and
        never take part in cross-modal exclusivity.
        """
        raise NotImplementedError

    def validate(self, prefix: str) -> None:
        """Raise ``ValueError`` naming ``prefix.<field>`` for invalid shapes."""
        c = self.cfg
        if not 0.0 <= c.mask_ratio < 1.0:
            raise ValueError(f"{prefix}.mask_ratio must be in [0, 1), got {c.mask_ratio}")
        if c.masking not in self.masking_styles:
            raise ValueError(
                f"{prefix}.masking must be one of {list(self.masking_styles)}, got {c.masking!r}"
            )

    # --- data-side ------------------------------------------------------
    def available(self, batch: dict, present: np.ndarray) -> np.ndarray:
        """``(B, N)`` bool: which tokens exist for each sample (padding excluded)."""
        return np.repeat(present[:, None], self.num_tokens, axis=1)

    def mask_scores(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``(B, N)`` masking priority for the configured style (higher = masked first)."""
        return rng.random((batch_size, self.num_tokens))

    def example(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A random batch of this modality's keys, with learnable structure."""
        raise NotImplementedError

    # --- stored data (an added modality; the built-ins' data paths live in oskar_ray/data) ---------
    #: file suffixes ``oskar data ingest --modality NAME=DIR`` reads (lower case, with the dot)
    file_suffixes: ClassVar[tuple[str, ...]] = ()

    def read_file(self, path: Path) -> bytes:
        """One source file → the bytes stored in the dataset's ``<name>`` column (at ingest).

        Raise ``ValueError`` saying what is wrong with the file: ingest counts it as a skip naming the file.
        """
        raise NotImplementedError(f"modality {self.name!r} defines no read_file: it cannot be ingested")

    def decode(self, stored: bytes) -> dict[str, np.ndarray]:
        """One row's stored bytes → its arrays (no batch axis), shaped by this config (in the data path).

        Raise ``ValueError`` for bytes that cannot be this modality's (the error names the row)."""
        raise NotImplementedError(f"modality {self.name!r} defines no decode: it cannot be streamed")

    def augment(self, arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Training-time augmentation of one decoded sample (``data.augment``); none by default."""
        return arrays

    def empty(self) -> dict[str, np.ndarray]:
        """Zeros shaped like one decoded sample: what a row without this modality carries."""
        example = self.example(1, torch.Generator().manual_seed(0))
        return {key: np.zeros(value.shape[1:], value.numpy().dtype) for key, value in example.items()}

    def blank(self, batch: dict, absent: torch.Tensor) -> None:
        """Zero this modality's inputs for samples where it is absent (in place)."""
        for key in self.batch_keys:
            value = batch[key]
            batch[key] = value.masked_fill(_expand_like(absent, value), 0)

    # --- model-side -----------------------------------------------------
    def build_tokenizer(self, dim: int) -> ModalityTokenizer:
        raise NotImplementedError


class ModalityTokenizer(nn.Module):
    """Raw input → ``(B, N, D)`` tokens carrying position + modality embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)

    def embed(self, batch: dict) -> torch.Tensor:
        """Content embedding ``(B, N, D)`` without positions."""
        raise NotImplementedError

    def position_embedding(self) -> torch.Tensor:
        """``(N, D)`` position embedding of every token slot."""
        raise NotImplementedError

    def valid_mask(self, batch: dict) -> torch.Tensor | None:
        """``(B, N)`` bool of real (non-padding) tokens, or None when all are real."""
        return None

    def slot_embedding(self) -> torch.Tensor:
        """Position + modality embedding ``(N, D)``: what a query at a slot knows."""
        return self.position_embedding() + self.modality_embedding

    def forward(self, batch: dict) -> torch.Tensor:
        return self.embed(batch) + self.slot_embedding()


def _expand_like(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return mask.view(mask.shape[0], *([1] * (value.dim() - 1)))


def register_modality(cls: type[Modality]) -> type[Modality]:
    """Class decorator: make a modality known to configs and the model."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty string")
    if cls.name not in BUILTIN_MODALITIES:
        clash = {cls.name, *cls.batch_keys} & RESERVED_NAMES
        if clash:
            raise ValueError(f"{cls.__name__}: {sorted(clash)} already name(s) a batch key, view or column")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_modality(name: str) -> None:
    _REGISTRY.pop(name, None)


def modality_class(name: str) -> type[Modality]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"modalities.{name}: unknown modality (registered: {sorted(_REGISTRY)}; a module listed under "
            f"`plugins:` registers its own)"
        ) from None


def registered_modalities() -> list[str]:
    return list(_REGISTRY)


def carried_modalities(names: Iterable[str]) -> dict[str, type[Modality]]:
    """The registered classes of the added (not built-in) modalities among ``names``: what work sent to
    another process (a Ray Train worker, a Ray Data task) carries, so that process knows them too."""
    return {name: _REGISTRY[name] for name in names if name not in BUILTIN_MODALITIES and name in _REGISTRY}


def adopt_modalities(classes: dict[str, type[Modality]]) -> None:
    """Register modality classes carried from another process (:func:`carried_modalities`)."""
    for name, cls in classes.items():
        if _REGISTRY.get(name) is not cls:
            _REGISTRY[name] = cls


# --- masking helpers shared by modalities ---------------------------------
def grouped_scores(
    group_of_token: np.ndarray, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """One random score per group, copied to its tokens, plus a tie-breaker.

    ``group_of_token`` is ``(N,)`` (same grouping for all samples) or ``(B, N)``.

    The tie-breaker is small enough that whole groups are masked before any
    token of a lower-scored group, so a partial group is masked only at the
    very end to hit the exact count.
    """
    groups = np.broadcast_to(group_of_token, (batch_size, group_of_token.shape[-1]))
    group_scores = rng.random((batch_size, int(groups.max()) + 1))
    jitter = rng.random(groups.shape) * 1e-6
    return np.take_along_axis(group_scores, groups, axis=1) + jitter
