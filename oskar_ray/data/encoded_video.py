"""Encoded video rows → uint8 clips, per visit: the data-path side of ``ingest --video-storage encoded``.

Runbook::

    frames, ok, padded = decode_row(row_bytes, attributes_json, cfg, train=True, rng=rng)
    frames.shape        # (modalities.video.frames, H, W, 3) uint8, H x W = modalities.video.height x width

A row holds the whole video's container bytes and, in ``attributes``, the frame
count and rate ingest decoded. Training draws a random window (``data.frame_step``)
and, with ``data.augment``, a random resized crop (``data.crop_scale`` /
``crop_aspect``, ``data.hflip``) from the batch's seeded generator, so two epochs see
different clips and the same seed repeats them. Evaluation reads the centred
window and centre crop, or the one an expanded row names in ``clip``
(``[start_frame, view]``; :func:`eval_clips` lists them: ``eval.video_segments`` x
``eval.video_views``; view -1: the centre one). A video that fails to decode returns
``ok=False`` and is logged (the caller zeroes it, marks the modality absent and counts
it); one shorter than a window repeats its last frame (``padded``, counted). The span
a window covers comes back too, so the row's skeleton is cut to the same time.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from .readers.clips import ClipPlan, DecodeError, centre_box, decode_clip

log = logging.getLogger(__name__)
#: the split storage values ingest writes (manifest splits.<split>.video_storage)
ENCODED, RAW = "encoded", "raw"


def clip_plan(cfg) -> ClipPlan:
    d = cfg.data
    return ClipPlan(frames=cfg.modalities["video"].frames, step=d.frame_step, scale=tuple(d.crop_scale),
                    aspect=tuple(d.crop_aspect), hflip=d.hflip)


def video_info(attributes: Any) -> dict[str, Any]:
    """The stored video's frames / fps / width / height (from the row's ``attributes`` JSON)."""
    info = json.loads(attributes) if isinstance(attributes, str | bytes) else dict(attributes or {})
    missing = [k for k in ("frames", "fps", "width", "height") if not info.get(k)]
    if missing:
        raise DecodeError(f"attributes lack {missing} (re-ingest the split with --video-storage encoded)")
    return info


def decode_row(encoded: bytes, attributes: Any, cfg, *, train: bool, rng: np.random.Generator,
               clip: Any = None) -> tuple[np.ndarray | None, bool, bool, tuple[float, float]]:
    """(frames (T, H, W, 3) uint8 or None, decoded, padded, span: the [start, end) fraction of the video the
    window covers) for one row; see the module doc."""
    c, plan = cfg.modalities["video"], clip_plan(cfg)
    try:
        info = video_info(attributes)
        total, width, height = int(info["frames"]), int(info["width"]), int(info["height"])
        flip = False
        if train:
            index, padded = plan.train_window(total, rng)
            box, flip = plan.train_box(width, height, rng) if cfg.data.augment else (centre_box(width, height), False)
        elif clip is not None and len(clip) == 2:
            index, padded = plan.window(total, int(clip[0]))
            views = plan.eval_boxes(width, height, cfg.eval.video_views)
            box = views[len(views) // 2] if int(clip[1]) < 0 else views[int(clip[1])]  # -1: the centre view
        else:
            (index, padded), box = plan.eval_windows(total, 1)[0], centre_box(width, height)
        frames = decode_clip(bytes(encoded), index, box, (c.height, c.width), float(info["fps"]), flip)
    except DecodeError as err:
        log.warning("skipped an undecodable video in the data path: %s", err)
        return None, False, False, (0.0, 1.0)
    return frames, True, padded, (index[0] / total, min(index[-1] + 1, total) / total)


def eval_clips(attributes: Any, cfg) -> list[list[int]]:
    """Every ``[start_frame, view]`` evaluation reads of one video: ``eval.video_segments`` windows spread
    over it x ``eval.video_views`` crops (features are averaged over them)."""
    plan = clip_plan(cfg)
    try:
        total = int(video_info(attributes)["frames"])
    except DecodeError:
        total = plan.span  # undecodable: the decode fails (and is counted) whichever clip is asked
    starts = [int(index[0]) for index, _ in plan.eval_windows(total, cfg.eval.video_segments)]
    return [[start, view] for start in starts for view in range(cfg.eval.video_views)]
