"""Raw video rows preprocessed a batch at a time (data/video_batch.py) and the batch's skeleton jitter: the same
clips a row-by-row reference gives, each training clip its own shift, absent rows zeros, bad rows named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oskar_ray.config import load_config
from oskar_ray.data.preprocess import DatasetMeta, _skeletons
from oskar_ray.data.readers.common import uniform_indices
from oskar_ray.data.video_batch import normalise_clips, video_batch

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


def _cfg(*overrides: str):
    return load_config(SMOKE, ["modalities.video.frames=4", "modalities.video.height=16",
                               "modalities.video.width=16", "modalities.video.patch=8", *overrides])


def _reference(stored: np.ndarray, frames: int, height: int, width: int, floor: float = 255e-3) -> np.ndarray:
    """One clip the plain way: resample, float64 statistics over the whole clip per channel, channels first."""
    clip = stored[uniform_indices(len(stored), frames)]
    clip = clip[:, uniform_indices(stored.shape[1], height)][:, :, uniform_indices(stored.shape[2], width)]
    clip = clip.astype(np.float64).transpose(0, 3, 1, 2)
    mean, std = clip.mean(axis=(0, 2, 3), keepdims=True), clip.std(axis=(0, 2, 3), keepdims=True)
    return (clip - mean) / np.maximum(std, floor)


def test_raw_rows_of_several_lengths_in_one_batch_match_the_row_by_row_clips_and_absent_rows_stay_zero():
    rng = np.random.default_rng(0)
    stored = [rng.integers(0, 256, (n, 24, 40, 3), dtype=np.uint8) for n in (12, 3, 12, 3)]
    near_flat = np.full((8, 24, 40, 3), 7, np.uint8)
    near_flat[:, 0, 0] = 8  # one pixel of the 16 x 24 kept: std 0.05 of a level, divided by the floor (0.255)
    values = [stored[0].tobytes(), bytearray(stored[1].tobytes()), None, memoryview(stored[2].tobytes()), b"",
              stored[3].tobytes(), near_flat.tobytes()]
    rows = {"id": [f"r{i}" for i in range(7)], "video": np.array(values, dtype=object)}  # as Arrow's to_numpy
    meta = DatasetMeta("root", "train", 24, 40, 25, "tok", False, False)
    cfg = _cfg("modalities.video.height=16", "modalities.video.width=24")
    clips, decoded, padded, spans = video_batch(rows, cfg, meta, train=False, rng=np.random.default_rng(1))
    assert clips.shape == (7, 4, 3, 16, 24) and clips.dtype == np.float32
    for row, clip in ((0, stored[0]), (1, stored[1]), (3, stored[2]), (5, stored[3]), (6, near_flat)):
        np.testing.assert_allclose(clips[row], _reference(clip, 4, 16, 24), atol=2e-5)
    assert np.abs(clips[6]).max() == pytest.approx((1 - 1 / 384) / 0.255, rel=1e-4)
    assert not clips[[2, 4]].any()
    assert decoded.all() and not padded.any() and (spans == [0.0, 1.0]).all()

    meta.video_mean, meta.video_std = (0.2, 0.5, 0.7), (0.1, 0.2, 0.3)
    dataset = video_batch(rows, _cfg("data.video_norm=dataset", "modalities.video.height=16",
                                     "modalities.video.width=24"), meta, train=False, rng=np.random.default_rng(1))[0]
    kept = stored[0][uniform_indices(12, 4)][:, uniform_indices(24, 16)][:, :, uniform_indices(40, 24)]
    want = (kept.transpose(0, 3, 1, 2) / 255.0 - np.array(meta.video_mean)[:, None, None]) / \
        np.array(meta.video_std)[:, None, None]
    np.testing.assert_allclose(dataset[0], want, atol=1e-5)
    assert not dataset[[2, 4]].any()


def test_decoded_clips_take_their_statistics_on_a_grid_of_pixels():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 3, 224, 160, 3), dtype=np.uint8)
    frames[1, ..., 2] //= 4  # channels differ
    out = normalise_clips(frames, "clip", None, np.empty((2, 3, 3, 224, 160), np.float32), grid=5)
    values = frames.astype(np.float64).transpose(0, 1, 4, 2, 3)
    sample = values[..., ::5, ::5]
    mean, std = sample.mean(axis=(1, 3, 4), keepdims=True), sample.std(axis=(1, 3, 4), keepdims=True)
    np.testing.assert_allclose(out, (values - mean) / std, atol=2e-4)
    assert np.abs(out.mean(axis=(1, 3, 4))).max() > 1e-4  # the grid's statistics, not the full frame's


def test_each_training_clip_is_rolled_by_its_own_offset_of_at_most_a_sixteenth_of_the_frame():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (24, 4, 32, 48, 3), dtype=np.uint8)
    rows = {"id": [f"r{i}" for i in range(24)], "video": [clip.tobytes() for clip in stored]}
    meta = DatasetMeta("root", "train", 32, 48, 25, "tok", False, False)
    cfg = _cfg("modalities.video.height=32", "modalities.video.width=48")
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
    assert {2, -2} <= {d for pair in offsets for d in pair}  # the whole range is drawn
    unshifted = video_batch(rows, _cfg("modalities.video.height=32", "modalities.video.width=48", "data.augment=false"),
                            meta, train=True, rng=np.random.default_rng(1))[0]
    np.testing.assert_array_equal(unshifted, plain)  # data.augment=false: training clips are not moved


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


def test_cached_frame_indices_cannot_be_changed_by_a_caller():
    indices = uniform_indices(300, 4)
    with pytest.raises(ValueError, match="read-only"):
        indices[0] = 1
    assert uniform_indices(300, 4).tolist() == [37, 112, 187, 262]
