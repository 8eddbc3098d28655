"""Clips from encoded videos in the data path: where a clip starts, what it crops, and decoding just that.

Runbook::

    info = {"frames": 300, "fps": 30.0}                       # stored at ingest (attributes)
    plan = ClipPlan(frames=16, step=4, scale=(0.3, 1.0), aspect=(0.75, 1.35), hflip=False)
    window = plan.train_window(info["frames"], rng)            # 16 frame indices, random start
    box = plan.train_box(width, height, rng)                    # random resized crop (x, y, w, h)
    clip = decode_clip(encoded_bytes, window, box, (224, 224))  # (16, 224, 224, 3) uint8

A training visit draws a random window (``frames`` indices ``step`` apart; V-JEPA's
frames_per_clip / frame_step) and a random resized crop (area share ``scale``,
aspect ``aspect``), optionally flipped; evaluation takes ``segments`` windows
spread evenly over the video x ``views`` crops along its long side (left/centre/
right for 3), the same every time. A video shorter than one window repeats its
last frame (``padded``, counted by the caller).

Decoding seeks to the keyframe before the window (containers that cannot seek
decode from the start) and converts only the frames the window keeps, resized by
FFmpeg's swscale so that the crop box lands on the output size, then sliced.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np

#: a crop box in source pixels: x, y, width, height
Box = tuple[int, int, int, int]


class DecodeError(ValueError):
    """A stored video that cannot be decoded (truncated, unsupported codec): the row is skipped and counted."""


@dataclass(frozen=True)
class ClipPlan:
    frames: int
    step: int = 4
    scale: tuple[float, float] = (0.3, 1.0)
    aspect: tuple[float, float] = (0.75, 1.35)
    hflip: bool = False

    @property
    def span(self) -> int:
        """Source frames one window covers."""
        return (self.frames - 1) * self.step + 1

    def window(self, total: int, start: int) -> tuple[np.ndarray, bool]:
        """``frames`` indices from ``start``, ``step`` apart; past the end the last frame repeats (padded)."""
        index = start + self.step * np.arange(self.frames)
        return np.minimum(index, total - 1), bool(index[-1] > total - 1)

    def train_window(self, total: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        return self.window(total, int(rng.integers(0, max(total - self.span, 0) + 1)))

    def eval_windows(self, total: int, segments: int) -> list[tuple[np.ndarray, bool]]:
        """``segments`` windows with starts spread evenly over the video (one: the centred window)."""
        room = max(total - self.span, 0)
        starts = [room // 2] if segments == 1 else np.linspace(0, room, segments).round().astype(int)
        return [self.window(total, int(s)) for s in starts]

    def train_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[Box, bool]:
        """A random resized crop box and whether to flip it (10 tries, else the centred full square-ish box)."""
        area = width * height
        for _ in range(10):
            share = rng.uniform(*self.scale)
            ratio = math.exp(rng.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
            w, h = round(math.sqrt(area * share * ratio)), round(math.sqrt(area * share / ratio))
            if 0 < w <= width and 0 < h <= height:
                box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
                return box, bool(self.hflip and rng.random() < 0.5)
        return centre_box(width, height), False

    def eval_boxes(self, width: int, height: int, views: int) -> list[Box]:
        """``views`` square crops along the long side (1: centre; 3: start, centre, end)."""
        side = min(width, height)
        if views == 1:
            return [centre_box(width, height)]
        offsets = np.linspace(0, max(width, height) - side, views).round().astype(int)
        if width >= height:
            return [(int(o), (height - side) // 2, side, side) for o in offsets]
        return [((width - side) // 2, int(o), side, side) for o in offsets]


def centre_box(width: int, height: int) -> Box:
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def decode_clip(encoded: bytes, index: np.ndarray, box: Box, size: tuple[int, int], fps: float,
                flip: bool = False) -> np.ndarray:
    """Frames ``index`` (sorted, may repeat) of an encoded video, cropped to ``box`` (x, y, w, h in source
    pixels), resized to ``size`` (height, width): ``(len(index), H, W, 3)`` uint8. Raises DecodeError."""
    out_h, out_w = size
    wanted = np.unique(index)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(encoded), mode="r") as container:
            stream = container.streams.video[0]
            by_count = not _seek(container, stream, int(wanted[0]), fps)
            for k, frame in enumerate(container.decode(stream)):
                position = k if by_count or frame.pts is None else _position(frame, stream, fps)
                if position > wanted[-1]:
                    break
                if position in wanted and position not in frames:
                    frames[position] = _crop(frame, box, out_w, out_h)
    except (av.FFmpegError, IndexError, OSError) as err:
        raise DecodeError(f"undecodable video ({type(err).__name__}: {err})") from None
    if not frames:
        raise DecodeError(f"no frame decoded at or after index {int(wanted[0])}")
    clip = np.stack(_fill_forward(frames, index))
    return clip[:, :, ::-1] if flip else clip


def _fill_forward(frames: dict[int, np.ndarray], index: np.ndarray) -> list[np.ndarray]:
    """The frame at each index; one missing (a damaged tail, a timestamp that rounds past it) takes the nearest
    earlier decoded frame, or the first decoded one before any."""
    known = sorted(frames)
    out = []
    for i in index:
        earlier = [k for k in known if k <= i]
        out.append(frames[earlier[-1] if earlier else known[0]])
    return out


def _seek(container, stream, target: int, fps: float) -> bool:
    """Seek to the keyframe at or before frame ``target``; False when decoding starts at the beginning (frame
    positions are then counted, else read from timestamps)."""
    if target <= 0 or fps <= 0 or stream.time_base is None:
        return False
    try:
        container.seek(int(target / fps / stream.time_base) + (stream.start_time or 0), stream=stream,
                       backward=True, any_frame=False)
    except av.FFmpegError:
        container.seek(0, stream=stream)
        return False
    return True


def _position(frame, stream, fps: float) -> int:
    seconds = (frame.pts - (stream.start_time or 0)) * stream.time_base
    return int(round(float(seconds) * fps))


def _crop(frame, box: Box, out_w: int, out_h: int) -> np.ndarray:
    """Resize the whole frame so the box becomes ``out_w`` x ``out_h`` (swscale), then slice the box."""
    x, y, w, h = box
    sx, sy = out_w / w, out_h / h
    full_w, full_h = max(out_w, round(frame.width * sx)), max(out_h, round(frame.height * sy))
    image = frame.to_ndarray(width=full_w, height=full_h, format="rgb24")
    top, left = min(round(y * sy), full_h - out_h), min(round(x * sx), full_w - out_w)
    return image[top:top + out_h, left:left + out_w]
