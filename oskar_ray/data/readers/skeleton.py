"""Skeleton files → normalised ``(T, J, 3)`` float32: NTU RGB+D ``.skeleton`` text and ``.npy`` arrays.

NTU ``.skeleton`` layout (whitespace-separated text): ``frameCount``; per frame
``bodyCount``; per body one info line (``bodyID clippedEdges ... trackingState``),
``jointCount`` (25), then one line per joint whose first three numbers are
camera-space x y z in metres. Handling:

* several bodies: keep the *most active* one (largest summed per-joint variance
  of position over time — the actor, not a passer-by), record the body count;
* frames in which the kept body is absent are dropped before resampling and
  counted (``empty_frames``);
* truncated files, non-numeric values, NaN/inf joints → :class:`ReadError`
  naming the file, line and field;
* the official missing-skeleton lists (:func:`read_missing_list`) name samples to skip.

``.npy``: ``(T, J, C>=3)`` numeric array, loaded with ``allow_pickle=False``.
Both are resampled uniformly to ``frames`` and normalised (centre on the
spine base, scale by torso length; see ``common.normalise_skeleton``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ReadError, normalise_skeleton, uniform_indices

SKELETON_EXTENSIONS = (".skeleton", ".npy")


class _Lines:
    """Sequential reader over non-empty lines that names the line on failure."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = [ln.split() for ln in path.read_text(errors="replace").splitlines()]
        self.pos = 0

    def next(self, what: str) -> list[str]:
        while self.pos < len(self.lines) and not self.lines[self.pos]:
            self.pos += 1
        if self.pos >= len(self.lines):
            raise ReadError(self.path, f"truncated: file ends where {what} was expected (line {self.pos + 1})")
        self.pos += 1
        return self.lines[self.pos - 1]

    def int(self, what: str) -> int:
        fields = self.next(what)
        try:
            return int(fields[0])
        except ValueError:
            raise ReadError(self.path, f"line {self.pos}: {what} must be an integer, got {fields[0]!r}") from None


def parse_ntu(path: str | Path) -> tuple[dict[str, np.ndarray], int, int]:
    """→ ({bodyID: (F, 25, 3) with NaN where absent}, frame count, max bodies in a frame)."""
    path = Path(path)
    lines = _Lines(path)
    n_frames = lines.int("frameCount")
    bodies: dict[str, np.ndarray] = {}
    max_bodies = 0
    for f in range(n_frames):
        n_bodies = lines.int(f"bodyCount of frame {f}")
        max_bodies = max(max_bodies, n_bodies)
        for _ in range(n_bodies):
            body_id = lines.next(f"body info line of frame {f}")[0]
            n_joints = lines.int(f"jointCount of frame {f}")
            joints = np.array([_xyz(lines, f, j) for j in range(n_joints)], dtype=np.float64)
            if body_id not in bodies:
                bodies[body_id] = np.full((n_frames, n_joints, 3), np.nan)
            if bodies[body_id].shape[1] != n_joints:
                raise ReadError(path, f"frame {f} body {body_id}: jointCount {n_joints} changed mid-file")
            bodies[body_id][f] = joints
    return bodies, n_frames, max_bodies


def _xyz(lines: _Lines, frame: int, joint: int) -> list[float]:
    fields = lines.next(f"joint {joint} of frame {frame}")
    try:
        xyz = [float(v) for v in fields[:3]]
    except ValueError:
        raise ReadError(lines.path, f"line {lines.pos}: joint {joint} x/y/z not numeric: {fields[:3]}") from None
    if len(xyz) < 3:
        raise ReadError(lines.path, f"line {lines.pos}: joint {joint} has {len(xyz)} of 3 coordinates (x y z)")
    if not np.all(np.isfinite(xyz)):
        raise ReadError(lines.path, f"line {lines.pos}: NaN/inf joint coordinates (frame {frame}, joint {joint})")
    return xyz


def most_active(bodies: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    def activity(seq: np.ndarray) -> float:
        seen = ~np.isnan(seq[:, 0, 0])
        return float(np.nanvar(seq[seen], axis=0).sum()) if seen.sum() > 1 else 0.0

    body_id = max(bodies, key=lambda b: (activity(bodies[b]), (~np.isnan(bodies[b][:, 0, 0])).sum()))
    return body_id, bodies[body_id]


def read_ntu_skeleton(path: str | Path, frames: int = 16) -> tuple[np.ndarray, dict]:
    path = Path(path)
    bodies, n_frames, max_bodies = parse_ntu(path)
    if n_frames == 0:
        raise ReadError(path, "frameCount is 0 (empty skeleton)")
    if not bodies:
        raise ReadError(path, f"no body in any of the {n_frames} frames")
    body_id, seq = most_active(bodies)
    seen = ~np.isnan(seq[:, 0, 0])
    info = {"bodies": max_bodies, "kept_body": body_id, "source_frames": n_frames,
            "empty_frames": int((~seen).sum())}
    return _finish(seq[seen], frames), info


def read_npy_skeleton(path: str | Path, frames: int = 16, joints: int = 25) -> tuple[np.ndarray, dict]:
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ReadError(path, f"not a plain numeric .npy array ({err})") from None
    if array.ndim != 3 or array.shape[2] < 3 or array.shape[1] != joints or len(array) == 0:
        raise ReadError(path, f"array shape {array.shape}: expected (T, {joints}, 3) with T > 0")
    if not np.issubdtype(array.dtype, np.number):
        raise ReadError(path, f"array dtype {array.dtype} is not numeric")
    array = array[..., :3].astype(np.float64)
    if not np.all(np.isfinite(array)):
        frame = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ReadError(path, f"NaN/inf joint coordinates (first in frame {frame})")
    return _finish(array, frames), {"bodies": 1, "source_frames": len(array), "empty_frames": 0}


def read_skeleton(path: str | Path, frames: int = 16, joints: int = 25) -> tuple[np.ndarray, dict]:
    path = Path(path)
    if path.suffix == ".npy":
        return read_npy_skeleton(path, frames, joints)
    seq, info = read_ntu_skeleton(path, frames)
    if seq.shape[1] != joints:
        raise ReadError(path, f"{seq.shape[1]} joints per body, the dataset uses {joints}")
    return seq, info


def _finish(seq: np.ndarray, frames: int) -> np.ndarray:
    return normalise_skeleton(seq[uniform_indices(len(seq), frames)])


def read_missing_list(path: str | Path) -> set[str]:
    """Sample names (e.g. ``S001C002P005R002A008``) of an official missing-skeleton list."""
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}
