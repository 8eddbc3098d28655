"""Render a camera-space skeleton as a small stick-figure video.

The same joints the skeleton modality sees are projected with a pinhole
camera and drawn as coloured bones over a textured background. Appearance
(shirt/trousers/background colours, texture, distractors) is drawn from the
caller's rng *independently of the action*: colour is an easy shortcut for
latent targets (docs/design.md, "SynthAction's shortcut"), so it carries no class information.

Use::

    appearance = sample_appearance(rng)
    clip = render(joints, appearance, height=32, width=32, rng=rng)   # (T, H, W, 3) uint8
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .motion import BONES, HEAD

#: named colours a caption/QA can mention (RGB 0-255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 20), "purple": (140, 50, 180), "white": (245, 245, 245), "black": (15, 15, 15),
    "pink": (245, 120, 190), "cyan": (40, 210, 220), "brown": (120, 70, 30), "grey": (128, 128, 128),
}
_LEG_BONES = {16, 17, 18, 19, 20, 21, 22, 23}  # indices into BONES: hips → feet
_SKIN_BONES = {2, 3}  # neck, head


@dataclass
class Appearance:
    shirt: str
    trousers: str
    skin: np.ndarray  # (3,)
    background: np.ndarray  # (3,)
    texture: float  # background noise std (0-255 scale)
    gradient: np.ndarray  # (2,) vertical/horizontal brightness ramp
    distractors: list[dict]  # {"colour", "start", "velocity", "size"} in unit image coords


def sample_appearance(rng: np.random.Generator, max_distractors: int = 2) -> Appearance:
    names = list(COLOURS)
    shirt, trousers = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    background = rng.uniform(0, 255, 3)
    # keep the figure visible: background far enough from both clothing colours
    while min(np.abs(background - np.array(COLOURS[c])).sum() for c in (shirt, trousers)) < 150:
        background = rng.uniform(0, 255, 3)
    n = int(rng.integers(0, max_distractors + 1))
    distractors = [
        {"colour": rng.uniform(0, 255, 3), "start": rng.uniform(0.05, 0.95, 2),
         "velocity": rng.uniform(-0.02, 0.02, 2), "size": float(rng.uniform(0.06, 0.12))}
        for _ in range(n)
    ]
    return Appearance(
        shirt=shirt, trousers=trousers, skin=rng.uniform([150, 100, 70], [240, 200, 170]),
        background=background, texture=float(rng.uniform(4, 20)), gradient=rng.uniform(-30, 30, 2),
        distractors=distractors,
    )


def project(joints: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, J, 3) camera space → (T, J, 2) pixel (u, v); focal length scales with the frame."""
    focal = 1.25 * min(height, width)
    z = np.maximum(joints[..., 2], 0.5)
    u = focal * joints[..., 0] / z + width / 2
    v = height * 0.55 - focal * joints[..., 1] / z
    return np.stack([u, v], axis=-1)


def render(joints: np.ndarray, look: Appearance, height: int, width: int,
           rng: np.random.Generator) -> np.ndarray:
    frames = joints.shape[0]
    video = _background(look, frames, height, width, rng)
    _draw_distractors(video, look)
    uv = project(joints, height, width)
    colours = np.array([_bone_colour(i, look) for i in range(len(BONES))])  # (nb, 3)
    samples = max(4, int(np.ceil(max(height, width) / 3)))
    w = np.linspace(0, 1, samples)[None, None, :, None]
    a = uv[:, [b[0] for b in BONES]][:, :, None, :]
    b = uv[:, [b[1] for b in BONES]][:, :, None, :]
    points = a + (b - a) * w  # (T, nb, S, 2)
    t_idx = np.broadcast_to(np.arange(frames)[:, None, None], points.shape[:3])
    col = np.broadcast_to(colours[None, :, None, :], (*points.shape[:3], 3))
    thickness = max(1, round(min(height, width) / 32))
    for dx in range(thickness):
        _splat(video, t_idx, points[..., 0] + dx, points[..., 1], col)
    _draw_head(video, uv[:, HEAD], look.skin, radius=max(1.0, min(height, width) / 24))
    noise = rng.normal(0, 3.0, video.shape)  # sensor noise, different every frame
    return np.clip(video + noise, 0, 255).astype(np.uint8)


def _bone_colour(index: int, look: Appearance) -> np.ndarray:
    if index in _SKIN_BONES:
        return look.skin
    if index in _LEG_BONES:
        return np.array(COLOURS[look.trousers], dtype=float)
    return np.array(COLOURS[look.shirt], dtype=float)


def _background(look: Appearance, frames: int, height: int, width: int,
                rng: np.random.Generator) -> np.ndarray:
    ys = np.linspace(-0.5, 0.5, height)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width)[None, :, None]
    static = look.background + look.gradient[0] * ys + look.gradient[1] * xs
    static = static + rng.normal(0, look.texture, (height, width, 3))  # texture fixed over time
    return np.repeat(static[None], frames, axis=0)


def _splat(video: np.ndarray, t_idx: np.ndarray, u: np.ndarray, v: np.ndarray, colour: np.ndarray) -> None:
    ui, vi = np.round(u).astype(int), np.round(v).astype(int)
    ok = (ui >= 0) & (ui < video.shape[2]) & (vi >= 0) & (vi < video.shape[1])
    video[t_idx[ok], vi[ok], ui[ok]] = colour[ok]


def _draw_head(video: np.ndarray, centre: np.ndarray, colour: np.ndarray, radius: float) -> None:
    _, height, width, _ = video.shape
    ys, xs = np.mgrid[0:height, 0:width]
    for t in range(video.shape[0]):
        inside = (xs - centre[t, 0]) ** 2 + (ys - centre[t, 1]) ** 2 <= radius**2
        video[t][inside] = colour


def _draw_distractors(video: np.ndarray, look: Appearance) -> None:
    frames, height, width, _ = video.shape
    for d in look.distractors:
        for t in range(frames):
            cx, cy = (d["start"] + d["velocity"] * t) % 1.0
            half = d["size"] / 2
            x0, x1 = int((cx - half) * width), int(np.ceil((cx + half) * width))
            y0, y1 = int((cy - half) * height), int(np.ceil((cy + half) * height))
            video[t, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = d["colour"]
