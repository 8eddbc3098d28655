"""SynthAction motions: NTU RGB+D 25-joint 3D skeletons performing action classes.

A motion is built from per-frame joint *angles* (arms, legs, torso pitch,
heading, root offset) fed through forward kinematics of a body with random
segment lengths, then placed in front of a camera (random yaw about the
vertical axis, random position, NTU-like depth of ~3-4 m). Coordinates are
NTU camera space: x to the camera's right, y up, z away from the camera, metres.

Use::

    rng = np.random.default_rng(0)
    params = sample_params(rng, action=ACTIONS.index("clap"), frames=16)
    joints = perform(params, rng)          # (16, 25, 3) float32

Everything random comes from the caller's generator: deterministic by seed.
Body frame (before placement): x = the person's left, y = up, z = forward
(toward the camera at heading 0), so "left hand" is the person's own left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: action classes; names are also the caption/answer phrases (underscores become spaces)
ACTIONS: tuple[str, ...] = (
    "wave_left", "wave_right", "raise_arms", "clap", "jump", "squat", "kick_left",
    "kick_right", "walk_left", "walk_right", "turn", "bow", "punch",
)
#: which side an action involves (hand/foot for wave/kick, screen direction for walk)
ACTION_SIDE: dict[str, str] = {
    "wave_left": "left", "wave_right": "right", "kick_left": "left", "kick_right": "right",
    "walk_left": "left", "walk_right": "right",
}
NUM_JOINTS = 25
# NTU joint ids (0-based)
SPINE_BASE, SPINE_MID, NECK, HEAD, SPINE_SHOULDER = 0, 1, 2, 3, 20
L_ARM = (4, 5, 6, 7, 21, 22)  # shoulder, elbow, wrist, hand, hand tip, thumb
R_ARM = (8, 9, 10, 11, 23, 24)
L_LEG = (12, 13, 14, 15)  # hip, knee, ankle, foot
R_LEG = (16, 17, 18, 19)
BONES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7), (7, 21), (6, 22),
    (20, 8), (8, 9), (9, 10), (10, 11), (11, 23), (10, 24), (0, 12), (12, 13), (13, 14),
    (14, 15), (0, 16), (16, 17), (17, 18), (18, 19),
)


@dataclass
class MotionParams:
    """Everything that decides one clip's motion (all drawn by :func:`sample_params`)."""

    action: int  # index into ACTIONS, or -1 for idle
    frames: int
    reps: int
    phase: float  # start phase in cycles
    warp: float  # non-uniform speed within the clip
    amplitude: float
    lengths: dict[str, float]
    position: tuple[float, float, float]  # root x, floor y, depth z in camera space
    yaw: float  # camera yaw about the vertical axis (radians)
    noise: float  # joint noise std (metres)


def sample_params(rng: np.random.Generator, action: int, frames: int,
                  reps: int | None = None) -> MotionParams:
    height = rng.uniform(1.5, 1.9)
    prop = lambda base: base * height * rng.uniform(0.9, 1.1)  # noqa: E731 (local shorthand)
    lengths = {
        "torso": prop(0.30), "neck": prop(0.06), "head": prop(0.10), "shoulder": prop(0.11),
        "upper_arm": prop(0.17), "forearm": prop(0.15), "hand": prop(0.05), "hip": prop(0.06),
        "thigh": prop(0.25), "shin": prop(0.24), "foot": prop(0.07),
    }
    if reps is None:
        reps = 1 if action >= 0 and ACTIONS[action] == "turn" else int(rng.integers(1, 4))
    return MotionParams(
        action=action, frames=frames, reps=reps, phase=float(rng.uniform(0, 0.15)),
        warp=float(rng.uniform(-0.25, 0.25)), amplitude=float(rng.uniform(0.8, 1.15)), lengths=lengths,
        position=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.1, 0.1)), float(rng.uniform(3.0, 4.0))),
        yaw=float(rng.uniform(-0.6, 0.6)), noise=float(rng.uniform(0.003, 0.012)),
    )


def perform(params: MotionParams, rng: np.random.Generator,
            segments: list[tuple[int, int, int, int]] | None = None) -> np.ndarray:
    """``(T, 25, 3)`` float32 camera-space joints.

    Trimmed clips perform ``params.action`` over all frames; untrimmed clips pass
    ``segments`` = [(action, reps, first frame, end frame)] and stay idle elsewhere.
    """
    t = np.arange(params.frames, dtype=np.float64)
    angles = idle_angles(t, params.frames)
    if segments is None:
        segments = [(params.action, params.reps, 0, params.frames)] if params.action >= 0 else []
    for action, reps, start, end in segments:
        mask = (t >= start) & (t < end)
        u = np.clip((t - start) / max(end - start - 1, 1), 0, 1)
        u = u + params.warp * np.sin(2 * np.pi * u) / (2 * np.pi)  # speed varies within the action
        cycles = reps * u + params.phase
        for key, value in action_angles(ACTIONS[action], cycles, reps, params.amplitude).items():
            angles[key] = np.where(mask, value, angles[key])
    joints = kinematics(angles, params.lengths)
    joints = place(joints, params)
    joints += rng.normal(0, params.noise, joints.shape)
    return joints.astype(np.float32)


def idle_angles(t: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Standing still with slight breathing sway (also the filler of untrimmed clips)."""
    sway = 0.03 * np.sin(2 * np.pi * t / max(frames, 8) * 1.5)
    zero = np.zeros_like(t)
    return {
        "l_arm": np.stack([0.15 + sway, zero, 0.25 + sway, zero + 1.2]),
        "r_arm": np.stack([0.15 - sway, zero, 0.25 - sway, zero + 1.2]),
        "l_leg": np.stack([zero, zero]), "r_leg": np.stack([zero, zero]),
        "root": np.stack([sway * 0.3, zero, zero]), "pitch": zero.copy(), "heading": zero.copy(),
    }


def action_angles(name: str, cycles: np.ndarray, reps: int, amp: float) -> dict[str, np.ndarray]:
    """Angles for one action; ``cycles`` counts repetitions (0 → reps) frame by frame.

    arm = (upper elevation, upper azimuth, fore elevation, fore azimuth): elevation 0 hangs
    down, pi points up; azimuth 0 is sideways, pi/2 forward. leg = (hip flexion, knee bend).
    """
    osc = np.sin(2 * np.pi * cycles)
    up = 0.5 - 0.5 * np.cos(2 * np.pi * cycles)  # 0 → 1 → 0 once per repetition
    zero = np.zeros_like(cycles)
    rest_arm = np.stack([zero + 0.15, zero, zero + 0.25, zero + 1.2])
    side_arm = "l_arm" if name.endswith("left") else "r_arm"
    side_leg = "l_leg" if name.endswith("left") else "r_leg"
    if name in ("wave_left", "wave_right"):
        return {side_arm: np.stack([zero + 2.5, zero, 2.9 + 0.45 * amp * osc, zero])}
    if name == "raise_arms":
        lift = 0.15 + 2.7 * amp * up
        return {"l_arm": np.stack([lift, zero, lift, zero]), "r_arm": np.stack([lift, zero, lift, zero])}
    if name == "clap":
        az = 1.1 + 0.6 * up
        arm = np.stack([zero + 1.45, az, zero + 1.55, az + 0.25])
        return {"l_arm": arm, "r_arm": arm.copy()}
    if name == "jump":
        return {"root": np.stack([zero, 0.3 * amp * np.sin(np.pi * cycles) ** 2, zero]),
                "l_leg": np.stack([0.4 * (1 - up), 0.8 * (1 - up)]),
                "r_leg": np.stack([0.4 * (1 - up), 0.8 * (1 - up)]),
                "l_arm": np.stack([0.2 + 2.2 * up, zero, 0.3 + 2.2 * up, zero]),
                "r_arm": np.stack([0.2 + 2.2 * up, zero, 0.3 + 2.2 * up, zero])}
    if name == "squat":
        leg = np.stack([1.3 * amp * up, 2.3 * amp * up])
        arm = np.stack([0.15 + 1.4 * up, zero + 1.57, 0.25 + 1.3 * up, zero + 1.57])
        return {"root": np.stack([zero, -0.38 * amp * up, -0.1 * up]), "l_leg": leg, "r_leg": leg.copy(),
                "l_arm": arm, "r_arm": arm.copy()}
    if name in ("kick_left", "kick_right"):
        return {side_leg: np.stack([1.5 * amp * up, 0.8 * up * (1 - up)])}
    if name in ("walk_left", "walk_right"):
        direction = -1.0 if name == "walk_left" else 1.0
        swing = 0.5 * amp * osc
        return {"l_leg": np.stack([swing, 0.6 * np.maximum(0, -osc)]),
                "r_leg": np.stack([-swing, 0.6 * np.maximum(0, osc)]),
                "l_arm": np.stack([-0.8 * swing, zero + 1.57, -0.8 * swing + 0.2, zero + 1.57]),
                "r_arm": np.stack([0.8 * swing, zero + 1.57, 0.8 * swing + 0.2, zero + 1.57]),
                "root": np.stack([direction * 0.3 * (cycles - cycles[0]), zero, zero]),
                "heading": zero + direction * 1.1}
    if name == "turn":
        return {"heading": 2 * np.pi * (cycles - cycles[0])}
    if name == "bow":
        return {"pitch": 0.9 * amp * up}
    if name == "punch":
        return {"r_arm": np.stack([0.5 + 1.07 * up, zero + 1.57, zero + 1.57, zero + 1.57]),
                "l_arm": rest_arm}
    raise ValueError(f"unknown action {name!r} (known: {list(ACTIONS)})")


def _direction(elevation: np.ndarray, azimuth: np.ndarray, side: float) -> np.ndarray:
    """Unit vectors (T, 3) in the body frame; ``side`` +1 mirrors to the left limb."""
    return np.stack([side * np.sin(elevation) * np.cos(azimuth), -np.cos(elevation),
                     np.sin(elevation) * np.sin(azimuth)], axis=-1)


def kinematics(angles: dict[str, np.ndarray], lengths: dict[str, float]) -> np.ndarray:
    """Forward kinematics in the body frame → (T, 25, 3), spine base at the origin."""
    T = angles["pitch"].shape[0]
    j = np.zeros((T, NUM_JOINTS, 3))
    up = np.array([0.0, 1.0, 0.0])
    j[:, SPINE_MID] = up * lengths["torso"] * 0.5
    j[:, SPINE_SHOULDER] = up * lengths["torso"]
    j[:, NECK] = up * (lengths["torso"] + lengths["neck"])
    j[:, HEAD] = up * (lengths["torso"] + lengths["neck"] + lengths["head"])
    for side, ids, key in ((1.0, L_ARM, "l_arm"), (-1.0, R_ARM, "r_arm")):
        ue, ua, fe, fa = angles[key]
        shoulder = j[:, SPINE_SHOULDER] + np.array([side * lengths["shoulder"], -0.02, 0.0])
        elbow = shoulder + _direction(ue, ua, side) * lengths["upper_arm"]
        fore = _direction(fe, fa, side)
        wrist = elbow + fore * lengths["forearm"]
        hand = wrist + fore * lengths["hand"] * 0.5
        tip = hand + fore * lengths["hand"] * 0.6
        thumb = wrist + fore * lengths["hand"] * 0.4 + np.array([0.0, 0.0, 0.03])
        j[:, list(ids)] = np.stack([shoulder, elbow, wrist, hand, tip, thumb], axis=1)
    # torso pitch (bow) tilts everything above the pelvis forward about the spine base
    upper = [SPINE_MID, SPINE_SHOULDER, NECK, HEAD, *L_ARM, *R_ARM]
    j[:, upper] = _rotate_x(j[:, upper], angles["pitch"])
    for side, ids, key in ((1.0, L_LEG, "l_leg"), (-1.0, R_LEG, "r_leg")):
        flex, bend = angles[key]
        hip = np.zeros((T, 3)) + np.array([side * lengths["hip"], -0.03, 0.0])
        knee = hip + _direction(flex, np.full(T, np.pi / 2), side) * lengths["thigh"]
        ankle = knee + _direction(flex - bend, np.full(T, np.pi / 2), side) * lengths["shin"]
        foot = ankle + np.array([0.0, -0.02, lengths["foot"]])
        j[:, list(ids)] = np.stack([hip, knee, ankle, foot], axis=1)
    j = _rotate_y(j, angles["heading"])
    return j + angles["root"].T[:, None, :]


def place(joints: np.ndarray, params: MotionParams) -> np.ndarray:
    """Body frame → camera space: camera yaw, lift to standing height, move to depth."""
    rotated = _rotate_y(joints, np.full(joints.shape[0], params.yaw))
    leg = params.lengths["thigh"] + params.lengths["shin"] + 0.05
    x, floor, depth = params.position
    # body forward (+z) faces the camera, camera z points away: flip z
    return rotated * np.array([1.0, 1.0, -1.0]) + np.array([x, floor + leg - 0.9, depth])


def _rotate_x(points: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    y, z = points[..., 1], points[..., 2]
    return np.stack([points[..., 0], c * y - s * z, s * y + c * z], axis=-1)


def _rotate_y(points: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, z = points[..., 0], points[..., 2]
    return np.stack([c * x + s * z, points[..., 1], -s * x + c * z], axis=-1)
