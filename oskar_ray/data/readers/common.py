"""Helpers shared by readers and the generator: temporal sampling, skeleton normalisation, errors."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class ReadError(ValueError):
    """An input item that cannot be used; the message names the file and field.

    Ingestion turns it into a counted, reported skip (or a hard error with ``--strict``).
    """

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def uniform_indices(available: int, wanted: int) -> np.ndarray:
    """``wanted`` frame indices spread uniformly over ``available`` frames (centre of each bin); read-only.

    Cached: the data path asks for the same few (a row's skeleton, every batch), and ``np.linspace`` costs ~20 us
    a call."""
    if available <= 0:
        raise ValueError("uniform_indices: no frames available")
    return _uniform_indices(int(available), int(wanted))


@lru_cache(maxsize=4096)
def _uniform_indices(available: int, wanted: int) -> np.ndarray:
    edges = np.linspace(0, available, wanted + 1)
    indices = np.minimum(((edges[:-1] + edges[1:]) / 2).astype(int), available - 1)
    indices.flags.writeable = False
    return indices


def normalise_skeleton(joints: np.ndarray, base: int = 0, shoulder: int = 20) -> np.ndarray:
    """Centre on the mean spine base and scale by the mean spine-base→spine-shoulder length.

    Centring on the *mean* (not per-frame) keeps translation (walking, jumping) visible;
    scaling by torso length removes body size and distance but keeps proportions.
    """
    centre = joints[:, base].mean(axis=0)
    torso = np.linalg.norm(joints[:, shoulder] - joints[:, base], axis=-1).mean()
    scale = torso if np.isfinite(torso) and torso > 1e-6 else 1.0
    return ((joints - centre) / scale).astype(np.float32)
