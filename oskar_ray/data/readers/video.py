"""Video files → fixed-size uint8 clips, decoded with PyAV (any container/codec FFmpeg knows).

``read_video(path, frames=16, height=32, width=32)`` decodes every frame once,
shrinking each immediately (aspect-preserving, so the short side fits, via
FFmpeg's swscale in ``frame.reformat``) to keep memory small even for 1080p
input, then centre-crops to H×W and picks ``frames`` uniformly spaced frames
over the real decoded count (container frame counts are often wrong).
Raises :class:`ReadError` naming the file for undecodable, empty or
stream-less inputs.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from .common import ReadError, uniform_indices

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


def fit_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Smallest aspect-preserving size covering ``width``×``height`` (then centre-cropped)."""
    scale = max(width / src_w, height / src_h)
    return max(width, round(src_w * scale)), max(height, round(src_h * scale))


def read_video(path: str | Path, frames: int = 16, height: int = 32, width: int = 32) -> tuple[np.ndarray, dict]:
    """``(frames, height, width, 3)`` uint8 and info {source_frames, fps, source_size}."""
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ReadError(path, f"undecodable video (cannot open container: {err})") from None
    with container:
        if not container.streams.video:
            raise ReadError(path, "no video stream in the container")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        small: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                w, h = fit_size(frame.width, frame.height, width, height)
                small.append(_centre_crop(frame.to_ndarray(width=w, height=h, format="rgb24"), height, width))
        except av.FFmpegError as err:
            if not small:
                raise ReadError(path, f"undecodable video stream ({err})") from None
            # a damaged tail: keep what decoded (the count is reported in info)
        if not small:
            raise ReadError(path, "video stream has no decodable frames (empty video)")
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        size = (stream.codec_context.width, stream.codec_context.height)
    clip = np.stack(small)[uniform_indices(len(small), frames)]
    return clip, {"source_frames": len(small), "fps": fps, "source_size": list(size)}


def _centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def write_video(path: str | Path, clip: np.ndarray, fps: int = 10, codec: str = "mpeg4") -> Path:
    """Encode a (T, H, W, 3) uint8 clip (test fixtures, storage benchmark)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        for image in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
