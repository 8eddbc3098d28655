"""Stored video rows → the batch's ``video`` column: ``(B, T, 3, H, W)`` float32 clips, normalised.

Runbook::

    clips, decoded, padded, spans = video_batch(rows, cfg, meta, train=True, rng=rng)

Raw rows (uint8 frames: the built-in benchmark) go a batch at a time: each row's kept frames (uniform in time)
are stacked, resampled in space if stored at another size, shifted when training (``data.augment``: a roll of at
most 1/16 of the frame each way, one offset per clip), then converted and normalised in a few whole-batch numpy
passes. Done a row at a time this was most of the data path's CPU (0.57 -> 0.24-0.27 ms a sample on the tiny
recipe; docs/results.md, "Ray's overhead", eighth pass). Encoded rows are decoded one by one (encoded_video.py:
random window and resized crop when training) into the same batch. Absent rows stay zeros (their
``present_video`` is false); ``decoded`` is false where an encoded row failed to decode, ``padded`` where its
window repeated its last frame, and ``spans`` holds the ``[start, end)`` fraction of each stored video its clip
covers (the skeleton is cut to it).

Normalisation (``data.video_norm``): ``clip`` — each clip and channel to mean 0 and std 1 by the clip's own
statistics (std floor 1e-3 of the [0, 1] range; a decoded video estimates them on every k-th pixel each way,
k = min(H, W) // 32, i.e. a grid of 32 to 63 pixels a side: at 224^2 full-frame statistics cost a third of a
decode); ``dataset`` — the manifest's statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .encoded_video import ENCODED, decode_row
from .readers.common import uniform_indices

if TYPE_CHECKING:
    from .preprocess import DatasetMeta

#: the smallest per-channel std ``clip`` normalisation divides by, in uint8 levels (1e-3 of the [0, 1] range)
STD_FLOOR = 255e-3


def video_batch(rows: dict, cfg, meta: DatasetMeta, *, train: bool,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(clips (B, T, 3, H, W) float32, decoded (B,), padded (B,), spans (B, 2)); see the module doc."""
    c, size = cfg.modalities["video"], len(rows["id"])
    clips = np.zeros((size, c.frames, 3, c.height, c.width), np.float32)
    decoded, padded = np.ones(size, bool), np.zeros(size, bool)
    spans = np.tile(np.array([0.0, 1.0]), (size, 1))
    if meta.video_storage != ENCODED:
        _raw_clips(rows, cfg, meta, train and cfg.data.augment, rng, clips)
        return clips, decoded, padded, spans
    for i, raw in enumerate(rows["video"]):
        if raw is None or len(raw) == 0:
            continue  # absent: zeros, present_video is false
        clip = rows["clip"][i] if "clip" in rows else None
        frames, decoded[i], padded[i], spans[i] = decode_row(raw, rows["attributes"][i], cfg, train=train,
                                                             rng=rng, clip=clip)
        if frames is not None:
            grid = max(1, min(frames.shape[1], frames.shape[2]) // 32)
            normalise_clips(frames[None], cfg.data.video_norm, meta, out=clips[i:i + 1], grid=grid)
    return clips, decoded, padded, spans


def _raw_clips(rows: dict, cfg, meta: DatasetMeta, augment: bool, rng: np.random.Generator,
               clips: np.ndarray) -> None:
    """Raw rows' frames, resampled, shifted when ``augment``, normalised into ``clips`` (absent rows untouched)."""
    c, raws = cfg.modalities["video"], list(rows["video"])
    lengths = np.array([0 if raw is None else len(raw) for raw in raws], np.int64)
    bad = np.flatnonzero(lengths % (meta.height * meta.width * 3))
    if bad.size:
        raise ValueError(f"{meta.root} split {meta.split} row {rows['id'][bad[0]]}: video has {lengths[bad[0]]} "
                         f"bytes, not a multiple of one {meta.height}x{meta.width}x3 frame")
    present = np.flatnonzero(lengths)
    if not present.size:
        return
    # only the kept frames are copied out of each row (a row may store many more than modalities.video.frames)
    stored = [np.frombuffer(raws[i], np.uint8).reshape(-1, meta.height, meta.width, 3) for i in present]
    frames = np.stack([clip[uniform_indices(len(clip), c.frames)] for clip in stored])
    if (meta.height, meta.width) != (c.height, c.width):
        frames = frames[:, :, uniform_indices(meta.height, c.height)][:, :, :, uniform_indices(meta.width, c.width)]
    if augment:
        frames = _shift(frames, rng, max(1, c.height // 16))
    if present.size == len(raws):
        normalise_clips(frames, cfg.data.video_norm, meta, out=clips)
    else:
        out = np.empty((present.size, *clips.shape[1:]), np.float32)
        clips[present] = normalise_clips(frames, cfg.data.video_norm, meta, out=out)


def _shift(frames: np.ndarray, rng: np.random.Generator, most: int) -> np.ndarray:
    """Each clip rolled over (H, W) by its own offsets in ``[-most, most]`` (``np.roll``'s wrap-around), as four
    block copies a clip: ``np.roll`` itself costs ~30 us a clip in argument handling alone."""
    height, width = frames.shape[2:4]
    offsets = rng.integers(-most, most + 1, (len(frames), 2)) % (height, width)
    shifted = np.empty_like(frames)
    for out, clip, (dh, dw) in zip(shifted, frames, offsets, strict=True):
        out[:, dh:, dw:] = clip[:, :height - dh, :width - dw]
        out[:, dh:, :dw] = clip[:, :height - dh, width - dw:]
        out[:, :dh, dw:] = clip[:, height - dh:, :width - dw]
        out[:, :dh, :dw] = clip[:, height - dh:, width - dw:]
    return shifted


def normalise_clips(frames: np.ndarray, mode: str, meta: Any, out: np.ndarray, grid: int = 1) -> np.ndarray:
    """uint8 ``(N, T, H, W, 3)`` frames → normalised float32 ``(N, T, 3, H, W)`` written into ``out`` (returned).

    ``clip`` statistics are taken on every ``grid``-th pixel each way, centred before the variance (no
    cancellation for near-constant clips). Whole-batch passes over ``out`` in float32 (convert, mean, centre,
    variance, scale), channels-first so every reduction runs over contiguous rows: a reduction over channels-last
    uint8 costs several times more."""
    np.copyto(out, frames.transpose(0, 1, 4, 2, 3))
    if mode == "clip":
        sample = out[..., ::grid, ::grid]
        out -= sample.mean(axis=(1, 3, 4), keepdims=True)
        count = sample.shape[1] * sample.shape[3] * sample.shape[4]
        # float32 sums a frame at a time, float64 across frames: no float32 accumulation over a whole long clip
        squares = np.einsum("ntchw,ntchw->ntc", sample, sample).sum(axis=1, dtype=np.float64)
        std = np.sqrt(squares / count).astype(np.float32)
        out *= (1.0 / np.maximum(std, STD_FLOOR))[:, None, :, None, None]
    else:
        out -= (np.asarray(meta.video_mean, np.float32) * 255.0)[:, None, None]
        out *= (1.0 / (np.asarray(meta.video_std, np.float32) * 255.0))[:, None, None]
    return out
