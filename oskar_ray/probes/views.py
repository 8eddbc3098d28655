"""Views: which encoder reads which modalities, named once for training-time probes and the eval suite.

A view string names the encoder and the modalities it sees: ``target:<m>`` is the
unimodal target encoder of ``m`` (the downstream backbone, docs/design.md),
``fusion:<m1>+<m2>`` the fusion encoder over those modalities together. The
pseudo-modality ``question`` (video QA) feeds question tokens through the text tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..metric_names import ACTION_VIEW_NAMES
from ..modalities import BUILTIN_MODALITIES

#: the action views: target encoders (unimodal) and the fusion encoder over video + skeleton
ACTION_VIEWS = dict(zip(ACTION_VIEW_NAMES, ("target:video", "target:skeleton", "fusion:video+skeleton"), strict=True))


def action_views(modalities: Iterable[str]) -> dict[str, str]:
    """:data:`ACTION_VIEWS` plus the target encoder of each added modality among ``modalities`` (an
    ``imu`` modality is read as view ``imu`` = ``target:imu``: its metrics are ``eval/action/imu/...``)."""
    added = {name: f"target:{name}" for name in modalities if name not in (*BUILTIN_MODALITIES, *ACTION_VIEWS)}
    return {**ACTION_VIEWS, **added}


def parse_view(view: str) -> tuple[str, list[str]]:
    """``"fusion:video+skeleton"`` -> ``("fusion", ["video", "skeleton"])``; a malformed view is refused."""
    encoder, sep, mods = view.partition(":")
    if not sep or encoder not in ("target", "fusion") or not mods:
        raise ValueError(f"view {view!r} must look like 'target:video' or 'fusion:video+skeleton'")
    names = mods.split("+")
    if encoder == "target" and len(names) != 1:
        raise ValueError(f"view {view!r}: a target encoder sees one modality")
    return encoder, names


def view_available(model, view: str) -> bool:
    """Whether the model has every modality the view needs (a video-only baseline has no skeleton)."""
    _, names = parse_view(view)
    return all(("text" if n == "question" else n) in model.modalities for n in names)
