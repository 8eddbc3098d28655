"""Modalities: token counts, time spans, masking structure, and adding one in a test."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from oskar_ray.config import load_config
from oskar_ray.modalities import (
    Modality,
    ModalityConfig,
    ModalityTokenizer,
    register_modality,
    registered_modalities,
    unregister_modality,
)
from oskar_ray.model import Oskar
from oskar_ray.model.budget import TokenBudgetSampler, build_modalities
from oskar_ray.train import train

SMOKE = "experiments/configs/smoke.yaml"


def _mods(*overrides):
    return build_modalities(load_config(SMOKE, list(overrides)))


def test_token_counts_and_time_spans():
    mods = _mods()
    assert mods["video"].num_tokens == 8 * 4 * 4
    assert mods["skeleton"].num_tokens == 4 * 25
    assert mods["text"].num_tokens == 24
    assert _mods("modalities.skeleton.joint_groups=parts")["skeleton"].num_tokens == 4 * 5
    video_spans = mods["video"].time_spans()
    assert video_spans[0].tolist() == [0.0, 0.125] and video_spans[-1].tolist() == [0.875, 1.0]
    assert mods["skeleton"].time_spans()[25].tolist() == [0.25, 0.5]  # segment-major order
    assert np.isnan(mods["text"].time_spans()).all()


def _masked(modality, batch_size=64, seed=0):
    rng = np.random.default_rng(seed)
    n = modality.num_tokens
    scores = modality.mask_scores(batch_size, rng)
    k = round(modality.cfg.mask_ratio * n)
    return np.argsort(-scores, axis=1)[:, :k], n


def test_tube_masking_masks_whole_tubes():
    video = _mods("modalities.video.masking=tube", "modalities.video.mask_ratio=0.5")["video"]
    masked, n = _masked(video)
    spatial = 16
    for row in masked:
        mask = np.zeros(n, bool)
        mask[row] = True
        per_position = mask.reshape(8, spatial).sum(0)
        assert set(per_position.tolist()) <= {0, 8}  # 64 masked = exactly 8 whole tubes


def _mean_adjacent_masked_pairs(style: str) -> float:
    """Average count of 4-neighbour pairs both masked in the first frame."""
    video = _mods(f"modalities.video.masking={style}", "modalities.video.mask_ratio=0.5")["video"]
    masked, n = _masked(video)
    pairs = []
    for row in masked:
        grid = np.zeros(n, bool)
        grid[row] = True
        frame = grid.reshape(8, 4, 4)[0]
        pairs.append((frame[:, 1:] & frame[:, :-1]).sum() + (frame[1:] & frame[:-1]).sum())
    return float(np.mean(pairs))


def test_block_masking_is_spatially_clustered():
    assert _mean_adjacent_masked_pairs("block") > _mean_adjacent_masked_pairs("random")


def test_skeleton_segments_and_text_spans():
    skeleton = _mods("modalities.skeleton.mask_ratio=0.5")["skeleton"]
    masked, n = _masked(skeleton)
    for row in masked:
        mask = np.zeros(n, bool)
        mask[row] = True
        assert set(mask.reshape(4, 25).sum(1).tolist()) <= {0, 25}  # whole time segments
    text = _mods("modalities.text.span_len=4", "modalities.text.mask_ratio=0.5")["text"]
    masked, n = _masked(text)
    runs = []
    for row in masked:
        mask = np.zeros(n, bool)
        mask[row] = True
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        runs.extend(np.diff(edges)[::2])
    assert np.mean(runs) >= 3.0  # contiguous spans, not scattered tokens


# --- a toy extra modality, defined entirely here --------------------------------
@dataclass
class AudioConfig(ModalityConfig):
    frames: int = 32
    mels: int = 16
    frames_per_token: int = 4


class Audio(Modality):
    name = "audio"
    config_class = AudioConfig
    batch_keys = ("audio",)

    @property
    def num_tokens(self):
        return self.cfg.frames // self.cfg.frames_per_token

    def time_spans(self):
        start = np.arange(self.num_tokens) / self.num_tokens
        return np.stack([start, start + 1 / self.num_tokens], 1)

    def example(self, batch_size, generator):
        t = torch.arange(self.cfg.frames).float()[None, :, None]
        pitch = torch.rand(batch_size, 1, 1, generator=generator)
        return {"audio": torch.sin(t * pitch + torch.arange(self.cfg.mels)[None, None, :] * 0.3)}

    def build_tokenizer(self, dim):
        return AudioTokenizer(self, dim)


class AudioTokenizer(ModalityTokenizer):
    def __init__(self, modality, dim):
        super().__init__(dim)
        c = modality.cfg
        self.k = c.frames_per_token
        self.proj = nn.Linear(c.frames_per_token * c.mels, dim)
        self.pos = nn.Parameter(torch.zeros(modality.num_tokens, dim))

    def embed(self, batch):
        audio = batch["audio"]
        return self.proj(audio.reshape(audio.shape[0], -1, self.k * audio.shape[-1]))

    def position_embedding(self):
        return self.pos


@pytest.fixture
def audio_registered():
    register_modality(Audio)
    yield
    unregister_modality("audio")


def test_new_modality_is_one_class_and_a_registry_entry(audio_registered):
    assert "audio" in registered_modalities()
    cfg = load_config(SMOKE, ["modalities.audio.mask_ratio=0.5", "budget.exclusive=true",
                             "train.steps=3", "train.batch_size=4"])
    model = Oskar(cfg)
    assert "audio" in model.target_encoders
    batch = model.example_batch(4, present={"audio": [True, False, True, True]})
    out = model(batch)
    assert "loss/audio" in out and torch.isfinite(out["loss"])
    assert model.encode(batch, ["audio"]).shape == (4, 128)
    drawn = TokenBudgetSampler(cfg).sample_batch(batch, np.random.default_rng(0))
    assert drawn["input_index"].max() < 128 + 100 + 24 + 8
    assert len(train(cfg, model=model)) == 3


def test_video_difference_planes_cancel_static_content():
    from oskar_ray.modalities.video import _input_planes

    static = torch.rand(2, 1, 3, 8, 8).expand(2, 6, 3, 8, 8).clone()
    moving = static.clone()
    moving[:, 3:, :, 2, 2] += 1.0  # one pixel changes at frame 3
    assert torch.equal(_input_planes(moving, "rgb"), moving)
    diff = _input_planes(moving, "diff")
    assert diff.shape == moving.shape and torch.count_nonzero(_input_planes(static, "diff")) == 0
    assert torch.allclose(diff[:, 3, :, 2, 2], torch.ones(2, 3)) and torch.count_nonzero(diff) == 2 * 3
    both = _input_planes(moving, "rgb_diff")
    assert both.shape == (2, 6, 6, 8, 8) and torch.equal(both[:, :, :3], moving)


@pytest.mark.parametrize("kind", ["diff", "rgb_diff"])
def test_video_input_kinds_build_and_train(kind):
    model = Oskar(load_config(SMOKE, [f"modalities.video.input={kind}"]))
    out = model(model.example_batch(3))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_video_input_kind_is_validated():
    with pytest.raises(ValueError, match=r"modalities.video.input must be one of"):
        load_config(SMOKE, ["modalities.video.input=flow"])
