"""Raw video rows preprocessed a batch at a time (data/video_batch.py) and the batch's skeleton jitter: the same
clips a row-by-row reference gives, each training clip its own shift, absent rows zeros, bad rows named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oskar_ray.config import load_config
from oskar_ray.data.preprocess import DatasetMeta, _skeletons
from oskar_ray.data.readers.common import uniform_indices
from oskar_ray.data.video_batch import video_batch

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


def _cfg(*overrides: str):
    return load_config(SMOKE, ["modalities.video.frames=4", "modalities.video.height=16",
                               "modalities.video.width=16", "modalities.video.patch=8", *overrides])


def _reference(stored: np.ndarray, frames: int, size: int) -> np.ndarray:
    """One clip the plain way: resample, float64 statistics over the whole clip per channel, channels first."""
    clip = stored[uniform_indices(len(stored), frames)]
    clip = clip[:, uniform_indices(stored.shape[1], size)][:, :, uniform_indices(stored.shape[2], size)]
    clip = clip.astype(np.float64).transpose(0, 3, 1, 2)
    mean, std = clip.mean(axis=(0, 2, 3), keepdims=True), clip.std(axis=(0, 2, 3), keepdims=True)
    return (clip - mean) / np.maximum(std, 255e-3)


def test_raw_rows_of_several_lengths_in_one_batch_match_the_row_by_row_clips_and_absent_rows_stay_zero():
    rng = np.random.default_rng(0)
    long_clip = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    short_clip = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    flat = np.full((8, 32, 32, 3), 7, np.uint8)  # one level: std 0, divided by the floor, not by zero
    rows = {"id": ["long", "none", "short", "empty", "flat"],
            "video": [long_clip.tobytes(), None, short_clip.tobytes(), b"", flat.tobytes()]}
    meta = DatasetMeta("root", "train", 32, 32, 25, "tok", False, False)
    clips, decoded, padded, spans = video_batch(rows, _cfg(), meta, train=False, rng=np.random.default_rng(1))
    assert clips.shape == (5, 4, 3, 16, 16) and clips.dtype == np.float32
    for row, stored in ((0, long_clip), (2, short_clip), (4, flat)):
        np.testing.assert_allclose(clips[row], _reference(stored, 4, 16), atol=2e-5)
    assert not clips[[1, 3]].any() and not clips[4].any()
    assert decoded.all() and not padded.any() and (spans == [0.0, 1.0]).all()

    dataset = video_batch(rows, _cfg("data.video_norm=dataset"), meta, train=False, rng=np.random.default_rng(1))[0]
    np.testing.assert_allclose(dataset[4], np.full((4, 3, 16, 16), (7 - 0.5 * 255) / (0.25 * 255)), rtol=1e-6)
    assert not dataset[[1, 3]].any()


def test_each_training_clip_is_rolled_by_its_own_offset_of_at_most_a_sixteenth_of_the_frame():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (24, 4, 32, 32, 3), dtype=np.uint8)
    rows = {"id": [f"r{i}" for i in range(24)], "video": [clip.tobytes() for clip in stored]}
    meta = DatasetMeta("root", "train", 32, 32, 25, "tok", False, False)
    cfg = _cfg("modalities.video.height=32", "modalities.video.width=32")
    plain = video_batch(rows, cfg, meta, train=False, rng=np.random.default_rng(1))[0]
    shifted = video_batch(rows, cfg, meta, train=True, rng=np.random.default_rng(1))[0]
    again = video_batch(rows, cfg, meta, train=True, rng=np.random.default_rng(1))[0]
    np.testing.assert_array_equal(shifted, again)  # the batch's generator decides
    offsets = []
    for clip, moved in zip(plain, shifted, strict=True):
        found = [(dh, dw) for dh in range(-2, 3) for dw in range(-2, 3)
                 if np.allclose(np.roll(clip, (dh, dw), axis=(2, 3)), moved, atol=1e-5)]
        assert len(found) == 1, found  # a roll within 32 / 16 = 2 pixels each way (per-clip statistics unchanged)
        offsets += found
    assert len(set(offsets)) > 5  # clips do not share one offset


def test_a_raw_row_that_is_not_whole_frames_is_named():
    rows = {"id": ["ok", "cut"], "video": [bytes(32 * 32 * 3), bytes(32 * 32 * 3 + 5)]}
    meta = DatasetMeta("data/set", "train", 32, 32, 25, "tok", False, False)
    with pytest.raises(ValueError, match=r"data/set split train row cut: video has 3077 bytes"):
        video_batch(rows, _cfg(), meta, train=False, rng=np.random.default_rng(0))


def test_skeleton_jitter_turns_about_the_vertical_axis_and_scales_each_clip_on_its_own():
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 1, (6, 16, 25, 3)).astype(np.float32)
    rows = {"id": list("abcdef"), "skeleton": [p.tobytes() for p in poses[:5]] + [None]}
    meta = DatasetMeta("root", "train", 32, 32, 25, "tok", False, False)
    cfg = load_config(SMOKE)
    out = _skeletons(rows, cfg, meta, True, np.random.default_rng(3))
    assert not out[5].any()  # absent: zeros, no noise
    scales = []
    for pose, moved in zip(poses[:5], out[:5], strict=True):
        pose = pose[uniform_indices(16, cfg.modalities["skeleton"].frames)]
        scale = float(np.sum(moved[..., 1] * pose[..., 1]) / np.sum(pose[..., 1] ** 2))  # vertical: scale only
        assert 0.9 <= scale <= 1.1 and np.abs(moved[..., 1] - scale * pose[..., 1]).std() < 0.02
        radius = np.hypot(pose[..., 0], pose[..., 2])  # a turn about the vertical axis keeps the radius
        assert np.abs(np.hypot(moved[..., 0], moved[..., 2]) - scale * radius).mean() < 0.02
        assert not np.allclose(moved[..., 0], scale * pose[..., 0], atol=0.05)  # and it did turn
        scales.append(scale)
    assert len({round(s, 4) for s in scales}) == 5
