"""Skeleton: ``(B, T, J, 3)`` joints → one token per (joint group, temporal segment).

Groups: ``joints`` (each joint its own group) or ``parts`` (five NTU RGB+D
body parts; needs ``joints=25``). Each group owns its projection (groups may
differ in size: they are zero-padded to the largest). Positions are a learned
group embedding plus a fixed sin-cos embedding of the segment index. Token
order is segment-major, so token ``s * G + g`` covers frames
``[s * segment_frames, (s + 1) * segment_frames)``.

Masking styles: ``random``; ``segments`` — whole time segments across all
groups (predict the motion of a span of time from its context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from .base import Modality, ModalityConfig, ModalityTokenizer, grouped_scores, register_modality
from .positions import sincos_1d

# NTU RGB+D 25-joint layout (0-based): torso+head, left arm, right arm, left leg, right leg
NTU25_PARTS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 20),
    (4, 5, 6, 7, 21, 22),
    (8, 9, 10, 11, 23, 24),
    (12, 13, 14, 15),
    (16, 17, 18, 19),
)


@dataclass
class SkeletonConfig(ModalityConfig):
    frames: int = 16
    joints: int = 25
    channels: int = 3
    segment_frames: int = 4
    joint_groups: str = "joints"
    masking: str = "segments"


@register_modality
class Skeleton(Modality):
    name = "skeleton"
    config_class = SkeletonConfig
    masking_styles = ("random", "segments")
    batch_keys = ("skeleton",)

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        if self.cfg.joint_groups == "parts":
            return NTU25_PARTS
        return tuple((j,) for j in range(self.cfg.joints))

    @property
    def num_segments(self) -> int:
        return self.cfg.frames // self.cfg.segment_frames

    @property
    def num_tokens(self) -> int:
        return self.num_segments * len(self.groups)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        c = self.cfg
        for field in ("frames", "joints", "channels", "segment_frames"):
            if getattr(c, field) <= 0:
                raise ValueError(f"{prefix}.{field} must be positive, got {getattr(c, field)}")
        if c.frames % c.segment_frames:
            raise ValueError(
                f"{prefix}.frames ({c.frames}) must be divisible by segment_frames ({c.segment_frames})"
            )
        if c.joint_groups not in ("joints", "parts"):
            raise ValueError(f"{prefix}.joint_groups must be 'joints' or 'parts', got {c.joint_groups!r}")
        if c.joint_groups == "parts" and c.joints != 25:
            raise ValueError(f"{prefix}.joint_groups='parts' needs the NTU layout (joints=25), got {c.joints}")

    def time_spans(self) -> np.ndarray:
        start = np.repeat(np.arange(self.num_segments), len(self.groups)) / self.num_segments
        return np.stack([start, start + 1.0 / self.num_segments], axis=1)

    def mask_scores(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.cfg.masking == "random":
            return rng.random((batch_size, self.num_tokens))
        segment_of_token = np.repeat(np.arange(self.num_segments), len(self.groups))
        return grouped_scores(segment_of_token, batch_size, rng)

    def example(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each joint oscillates around a rest pose with a per-sample rhythm."""
        c = self.cfg
        rest = torch.rand(batch_size, 1, c.joints, c.channels, generator=generator) * 2 - 1
        phase = torch.rand(batch_size, 1, c.joints, 1, generator=generator) * 2 * math.pi
        speed = 0.2 + torch.rand(batch_size, 1, 1, 1, generator=generator) * 0.8
        t = torch.arange(c.frames).view(1, -1, 1, 1).float()
        motion = 0.3 * torch.sin(speed * t + phase)
        noise = 0.02 * torch.randn(batch_size, c.frames, c.joints, c.channels, generator=generator)
        return {"skeleton": rest + motion + noise}

    def build_tokenizer(self, dim: int) -> ModalityTokenizer:
        return SkeletonTokenizer(self, dim)


class SkeletonTokenizer(ModalityTokenizer):
    def __init__(self, modality: Skeleton, dim: int):
        super().__init__(dim)
        c = modality.cfg
        groups = modality.groups
        widest = max(len(g) for g in groups)
        # pad short groups by pointing at joint 0 and zeroing it through `valid`
        index = torch.tensor([list(g) + [0] * (widest - len(g)) for g in groups])
        valid = torch.tensor([[1.0] * len(g) + [0.0] * (widest - len(g)) for g in groups])
        self.register_buffer("joint_index", index, persistent=False)
        self.register_buffer("joint_valid", valid, persistent=False)
        self.segment_frames = c.segment_frames
        fan_in = c.segment_frames * widest * c.channels
        self.weight = nn.Parameter(torch.empty(len(groups), fan_in, dim))
        self.bias = nn.Parameter(torch.zeros(len(groups), dim))
        nn.init.trunc_normal_(self.weight, std=fan_in**-0.5)
        self.group_embedding = nn.Parameter(torch.zeros(len(groups), dim))
        nn.init.trunc_normal_(self.group_embedding, std=0.02)
        time = sincos_1d(torch.arange(modality.num_segments), dim)
        self.register_buffer("time_embedding", time, persistent=False)

    def embed(self, batch: dict) -> torch.Tensor:
        joints = batch["skeleton"][:, :, self.joint_index]  # (B, T, G, widest, C)
        joints = joints * self.joint_valid[None, None, :, :, None]
        segments = rearrange(joints, "b (s f) g j c -> b s g (f j c)", f=self.segment_frames)
        tokens = torch.einsum("bsgi,gid->bsgd", segments, self.weight) + self.bias
        return rearrange(tokens, "b s g d -> b (s g) d")

    def position_embedding(self) -> torch.Tensor:
        per_slot = self.time_embedding[:, None, :] + self.group_embedding[None, :, :]
        return per_slot.reshape(-1, per_slot.shape[-1])
