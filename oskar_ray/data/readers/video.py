"""Video files → fixed-size uint8 clips, decoded with PyAV (any container/codec FFmpeg knows).

``read_video(path, frames=16, height=32, width=32)`` decodes every frame once,
shrinking each immediately (aspect-preserving, so the short side fits, via
FFmpeg's swscale in ``frame.reformat``) to keep memory small even for 1080p
input, then centre-crops to H×W and picks ``frames`` uniformly spaced frames
over the real decoded count (container frame counts are often wrong).
Raises :class:`ReadError` naming the file for undecodable, empty or
stream-less inputs.

``probe_video(path)`` decodes every frame without converting it (the checks and
the exact frame count an encoded dataset row stores); ``reencode_video`` writes a
smaller copy (short side, frame rate) when ingest is asked to shrink videos.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from .common import ReadError, uniform_indices

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


def fit_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Smallest aspect-preserving size covering ``width``×``height`` (then centre-cropped)."""
    scale = max(width / src_w, height / src_h)
    return max(width, round(src_w * scale)), max(height, round(src_h * scale))


def _decoded(path: Path, data: bytes | None, convert) -> tuple[list, dict]:
    """``(converted frames, {fps, width, height, codec})`` of the first video stream of ``path`` (or ``data``, its
    bytes), each frame passed through ``convert``; a damaged tail keeps what decoded before it. ReadError names
    what is wrong."""
    try:
        container = av.open(io.BytesIO(data) if data is not None else str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ReadError(path, f"undecodable video (cannot open container: {err})") from None
    with container:
        if not container.streams.video:
            raise ReadError(path, "no video stream in the container")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames: list = []
        try:
            for frame in container.decode(stream):
                frames.append(convert(frame))
        except av.FFmpegError as err:
            if not frames:
                raise ReadError(path, f"undecodable video stream ({err})") from None
        if not frames:
            raise ReadError(path, "video stream has no decodable frames (empty video)")
        ctx = stream.codec_context  # read before the container closes
        return frames, {"fps": float(stream.average_rate) if stream.average_rate else 0.0, "width": ctx.width,
                        "height": ctx.height, "codec": ctx.name}


def read_video(path: str | Path, frames: int = 16, height: int = 32, width: int = 32) -> tuple[np.ndarray, dict]:
    """``(frames, height, width, 3)`` uint8 and info {source_frames, fps, source_size}."""

    def small(frame) -> np.ndarray:
        w, h = fit_size(frame.width, frame.height, width, height)
        return _centre_crop(frame.to_ndarray(width=w, height=h, format="rgb24"), height, width)

    decoded, info = _decoded(Path(path), None, small)
    clip = np.stack(decoded)[uniform_indices(len(decoded), frames)]
    return clip, {"source_frames": len(decoded), "fps": info["fps"], "source_size": [info["width"], info["height"]]}


def probe_video(path: str | Path, data: bytes | None = None) -> dict:
    """Decode every frame once (no conversion): {frames, fps, duration_s, width, height, codec}; ReadError if
    the file (or ``data``, its bytes after a re-encode) cannot be decoded (a damaged tail keeps the frames
    before it: ``frames`` counts what decodes)."""
    decoded, info = _decoded(Path(path), data, lambda frame: None)
    count, fps = len(decoded), info["fps"]
    return {"frames": count, "fps": fps, "duration_s": round(count / fps, 3) if fps else 0.0, "width": info["width"],
            "height": info["height"], "codec": info["codec"]}


def reencode_video(path: str | Path, short_side: int, keep_every: int, info: dict, codec: str = "mpeg4") -> bytes:
    """The video re-encoded with its short side scaled to ``short_side`` (0: kept) and every ``keep_every``-th
    frame; ``info``: its :func:`probe_video` result. The output rate is exact (a fraction), so durations hold."""
    import tempfile
    from fractions import Fraction

    path = Path(path)
    scale = short_side / min(info["width"], info["height"]) if short_side else 1.0
    width, height = 2 * max(1, round(info["width"] * scale / 2)), 2 * max(1, round(info["height"] * scale / 2))
    rate = Fraction(info["fps"]).limit_denominator(1001) / keep_every
    with av.open(str(path)) as source, tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "video.mp4"
        with av.open(str(out_path), mode="w") as out:
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            try:
                for k, frame in enumerate(source.decode(video=0)):
                    if k % keep_every == 0:
                        image = frame.reformat(width=width, height=height, format="yuv420p")
                        image.pts, image.time_base = k // keep_every, 1 / rate  # one tick per kept frame
                        out.mux(stream.encode(image))
            except av.FFmpegError:
                pass  # a damaged tail: probe_video already counted the frames before it
            out.mux(stream.encode())
        return out_path.read_bytes()


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
