"""Video: ``(B, T, 3, H, W)`` clips → 3D tubelet tokens with sin-cos 3D positions.

Token order is t-major (then h, w), so token ``i`` covers frames
``[t * tubelet, (t + 1) * tubelet)`` — that span is what cross-modal
exclusivity compares with skeleton segments.

Masking styles
* ``random`` — independent tokens;
* ``tube``   — whole spatial positions across all time (VideoMAE): stops the
  model copying a patch from the neighbouring frame;
* ``block``  — a few random spatial rectangles repeated over time (V-JEPA
  multi-block), topped up with tubes to hit the exact ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from .base import Modality, ModalityConfig, ModalityTokenizer, grouped_scores, register_modality
from .positions import sincos_3d


@dataclass
class VideoConfig(ModalityConfig):
    frames: int = 16
    height: int = 32
    width: int = 32
    channels: int = 3
    tubelet: int = 2
    patch: int = 8
    masking: str = "tube"
    #: rectangles per sample for ``block`` masking
    blocks: int = 4
    #: what a tubelet holds: ``rgb`` frames, ``diff`` temporal differences, or ``rgb_diff`` both
    input: str = "rgb"


@register_modality
class Video(Modality):
    name = "video"
    config_class = VideoConfig
    masking_styles = ("random", "tube", "block")
    input_kinds = ("rgb", "diff", "rgb_diff")
    batch_keys = ("video",)

    @property
    def grid(self) -> tuple[int, int, int]:
        c = self.cfg
        return c.frames // c.tubelet, c.height // c.patch, c.width // c.patch

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        c = self.cfg
        for field in ("frames", "height", "width", "channels", "tubelet", "patch", "blocks"):
            if getattr(c, field) <= 0:
                raise ValueError(f"{prefix}.{field} must be positive, got {getattr(c, field)}")
        if c.input not in self.input_kinds:
            raise ValueError(f"{prefix}.input must be one of {list(self.input_kinds)}, got {c.input!r}")
        if c.frames % c.tubelet:
            raise ValueError(f"{prefix}.frames ({c.frames}) must be divisible by tubelet ({c.tubelet})")
        for field in ("height", "width"):
            if getattr(c, field) % c.patch:
                raise ValueError(
                    f"{prefix}.{field} ({getattr(c, field)}) must be divisible by patch ({c.patch})"
                )

    def time_spans(self) -> np.ndarray:
        grid_t, grid_h, grid_w = self.grid
        start = np.repeat(np.arange(grid_t), grid_h * grid_w) / grid_t
        return np.stack([start, start + 1.0 / grid_t], axis=1)

    def _spatial_index(self) -> np.ndarray:
        grid_t, grid_h, grid_w = self.grid
        return np.tile(np.arange(grid_h * grid_w), grid_t)

    def mask_scores(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        style = self.cfg.masking
        if style == "random":
            return rng.random((batch_size, self.num_tokens))
        tubes = grouped_scores(self._spatial_index(), batch_size, rng)
        if style == "tube":
            return tubes
        return tubes + self._block_membership(batch_size, rng)[:, self._spatial_index()]

    def _block_membership(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``(B, H'*W')`` 1.0 inside any of the sampled rectangles."""
        _, grid_h, grid_w = self.grid
        n = self.cfg.blocks
        # each rectangle covers about ratio/blocks of the frame; overlaps are topped up by tubes
        area = self.cfg.mask_ratio / n
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (batch_size, n)))
        bh = np.clip(np.round(np.sqrt(area * aspect) * grid_h), 1, grid_h).astype(int)
        bw = np.clip(np.round(np.sqrt(area / aspect) * grid_w), 1, grid_w).astype(int)
        top = (rng.random((batch_size, n)) * (grid_h - bh + 1)).astype(int)
        left = (rng.random((batch_size, n)) * (grid_w - bw + 1)).astype(int)
        rows = np.arange(grid_h)[None, None, :, None]
        cols = np.arange(grid_w)[None, None, None, :]
        inside = (
            (rows >= top[..., None, None])
            & (rows < (top + bh)[..., None, None])
            & (cols >= left[..., None, None])
            & (cols < (left + bw)[..., None, None])
        )
        return inside.any(axis=1).reshape(batch_size, -1).astype(float)

    def example(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Drifting sinusoidal gratings: masked patches are predictable from context."""
        c = self.cfg

        def draw(*shape):
            return torch.rand(*shape, generator=generator)

        t = torch.arange(c.frames).view(1, -1, 1, 1, 1).float()
        y = torch.linspace(0, 1, c.height).view(1, 1, 1, -1, 1)
        x = torch.linspace(0, 1, c.width).view(1, 1, 1, 1, -1)
        freq_y, freq_x = (draw(batch_size, 1, 1, 1, 1) * 4 for _ in range(2))
        speed = draw(batch_size, 1, 1, 1, 1) * 0.6
        phase = draw(batch_size, 1, c.channels, 1, 1) * 2 * math.pi
        clip = torch.sin(2 * math.pi * (freq_y * y + freq_x * x) + speed * t + phase)
        clip = clip + 0.1 * torch.randn(clip.shape, generator=generator)
        return {"video": clip.float()}

    def build_tokenizer(self, dim: int) -> ModalityTokenizer:
        return VideoTokenizer(self, dim)


class VideoTokenizer(ModalityTokenizer):
    def __init__(self, modality: Video, dim: int):
        super().__init__(dim)
        c = modality.cfg
        self.tubelet, self.patch, self.input = c.tubelet, c.patch, c.input
        planes = 2 if c.input == "rgb_diff" else 1
        self.proj = nn.Linear(c.tubelet * c.patch * c.patch * c.channels * planes, dim)
        self.register_buffer("positions", sincos_3d(*modality.grid, dim), persistent=False)

    def embed(self, batch: dict) -> torch.Tensor:
        patches = rearrange(
            _input_planes(batch["video"], self.input),
            "b (t pt) c (h ph) (w pw) -> b (t h w) (pt ph pw c)",
            pt=self.tubelet,
            ph=self.patch,
            pw=self.patch,
        )
        return self.proj(patches)

    def position_embedding(self) -> torch.Tensor:
        return self.positions


def _input_planes(video: torch.Tensor, kind: str) -> torch.Tensor:
    """``(B, T, C, H, W)`` → the planes the tubelets hold (channels doubled for ``rgb_diff``).

    Temporal differences cancel everything static (background, texture, a
    motionless torso), so what is left to predict is the motion; the first
    frame's difference is zero, not a wrap-around.
    """
    if kind == "rgb":
        return video
    diff = torch.cat([torch.zeros_like(video[:, :1]), video[:, 1:] - video[:, :-1]], dim=1)
    return diff if kind == "diff" else torch.cat([video, diff], dim=2)
