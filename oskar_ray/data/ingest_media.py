"""What ingest reads per sample and how it reports what it could not: the skip report, file discovery by stem,
video bytes (raw clips or whole encoded videos) and an added modality's files (used by ``ingest.py``)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modalities import BUILTIN_MODALITIES, Modality, modality_class
from . import store
from .readers.common import ReadError
from .readers.video import probe_video, read_video, reencode_video


class IngestError(RuntimeError):
    """Raised under --strict for the first skipped item."""


@dataclass
class Report:
    strict: bool
    skips: list[dict[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def skip(self, kind: str, item: str, reason: str, category: str) -> None:
        """Record one unusable item; ``category`` groups the console summary (no ids in it)."""
        if self.strict:
            raise IngestError(f"--strict: {kind} {item}: {reason}")
        self.skips.append({"kind": kind, "item": str(item), "reason": reason, "category": category})

    def note(self, key: str, entry: Any) -> None:
        """Something kept but changed or worth knowing (a clipped segment): listed in the report, never silent."""
        self.notes.setdefault(key, []).append(entry)

    def summary(self) -> dict[str, int]:
        return dict(Counter(f"{s['kind']}: {s['category']}" for s in self.skips))


def category(reason: str) -> str:
    # "truncated: file ends where ..." → "truncated"; "line 7: NaN/inf joint ..." → "NaN/inf joint ..."
    text = reason.split(": ", 1)[1] if reason.startswith("line ") and ": " in reason else reason
    return text.split(" (")[0].split(":")[0][:60]


def files_by_stem(folder: Path | None, extensions: tuple[str, ...], what: str, report: Report,
                  flag: str = "") -> dict[str, Path]:
    if folder is None:
        return {}
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag or '--' + what}: {folder} is not a directory")
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in extensions or not p.is_file():
            continue
        if p.stem in found:  # stems are the join key: a second file would be ambiguous
            report.skip(what.rstrip("s"), str(p), f"duplicate stem {p.stem!r} (kept {found[p.stem]})",
                        "duplicate stem")
            continue
        found[p.stem] = p
    return found


def match_stem(stem: str, available: dict[str, Any]) -> str | None:
    if stem in available:
        return stem
    if stem.endswith("_rgb") and stem[:-4] in available:  # NTU RGB+D naming
        return stem[:-4]
    return None


# --- video -------------------------------------------------------------------------------------
def read_stored_video(path: Path, opts) -> tuple[bytes, dict[str, Any]]:
    """The stored bytes and attributes of one video: ``frames`` raw uint8 clips, or the whole container (its
    source bytes, or a re-encode when it exceeds ``reencode_short_side`` / ``reencode_fps``). ReadError names
    what is wrong (undecodable, no frame rate). ``opts``: the ``IngestOptions`` (video_storage, reencode_*, frames,
    height, width)."""
    if opts.video_storage == "raw":
        clip, info = read_video(path, opts.frames, opts.height, opts.width)
        return clip.tobytes(), {"fps": info["fps"], "source_frames": info["source_frames"]}
    info = probe_video(path)  # names an undecodable file up front, counts the frames exactly
    if info["fps"] <= 0:
        raise ReadError(path, "no frame rate in the container (clip windows and segments need one)")
    data = path.read_bytes()
    too_big = opts.reencode_short_side and min(info["width"], info["height"]) > opts.reencode_short_side
    too_fast = opts.reencode_fps and info["fps"] > opts.reencode_fps
    if too_big or too_fast:
        keep_every = math.ceil(info["fps"] / opts.reencode_fps) if too_fast else 1
        data = reencode_video(path, opts.reencode_short_side if too_big else 0, keep_every, info)
        info = {**probe_video(path, data), "source_bytes": path.stat().st_size}
    # frames / fps describe the stored video (what the data path decodes); source_frames keeps segments' clock
    return data, {**info, "source_frames": info["frames"], "storage": "encoded"}


class ShardWriter:
    """Rows are written a shard at a time (whole encoded videos: a split never sits in memory); keeps only the
    texts the tokenizer is trained on and the rows per combination of stored modalities."""

    def __init__(self, out: Path, split: str, video_storage: str, extra: list[str]):
        self.out, self.split, self.extra, self.pending, self.names = out, split, extra, [], []
        self.per_shard = store.ENCODED_ROWS_PER_SHARD if video_storage == "encoded" else store.ROWS_PER_SHARD
        self.texts: list[dict[str, Any]] = []
        #: rows per combination of stored modalities ("video+skeleton": 40): what a run can tell without a scan
        self.presence: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)
        self.texts.append({k: row.get(k, []) for k in ("captions", "questions", "choices")}
                          | {"action_name": row.get("action_name", "")})
        carried = [name for name in ("video", "skeleton", *self.extra) if row.get(name)]
        carried += ["text"] if any(str(c).strip() for c in row.get("captions", [])) else []
        self.presence["+".join(carried)] = self.presence.get("+".join(carried), 0) + 1
        if len(self.pending) == self.per_shard:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.names += store.write_split(self.pending, self.out, self.split, start_shard=len(self.names),
                                            extra=self.extra, rows_per_shard=self.per_shard)
            self.pending = []


# --- an added modality (oskar_ray/modalities/base.py) --------------------------------------------
def added_modalities(folders: dict[str, Path], out: Path, manifest: dict[str, Any],
                     report: Report) -> list[tuple[Modality, dict[str, Path]]]:
    """Each ``--modality NAME=DIR``: the registered modality (default settings: ``read_file`` stores whole
    files; shapes are the training config's business) and its files by stem; the manifest learns the name. A
    later split may leave out a modality the dataset has (stored as absent) without importing it."""
    extra = store.extra_modalities(manifest)
    new = [name for name in folders if name not in extra]
    for name in folders:
        if name in BUILTIN_MODALITIES:
            raise ValueError(f"--modality {name}: built in; its files come with --videos / --skeletons / --captions")
        if name in new and manifest["splits"]:
            raise ValueError(f"--modality {name}: {out} has splits {sorted(manifest['splits'])} stored without "
                             f"it; a dataset's added modalities are fixed by its first split")
    found = []
    for name, folder in folders.items():
        cls = modality_class(name)
        if not cls.file_suffixes:
            raise ValueError(f"--modality {name}: {cls.__name__}.file_suffixes is empty (no file it can read)")
        files = files_by_stem(folder, cls.file_suffixes, name, report, flag=f"--modality {name}")
        if not files:
            raise FileNotFoundError(f"--modality {name}: no {', '.join(cls.file_suffixes)} files under {folder}")
        found.append((cls(cls.config_class()), files))
    store.schema([*extra, *new])  # refuses a name that clashes with a stored column
    manifest["modalities"] += new
    for modality, _ in found:
        if modality.name in new:
            manifest["storage"][modality.name] = f"bytes of {type(modality).__name__}.read_file"
    return found


def read_added(row: dict[str, Any], stem: str, modality: Modality, files: dict[str, Path], report: Report) -> None:
    key = match_stem(stem, files)
    if key is None:
        return
    try:
        stored = modality.read_file(files[key])
    except (ValueError, OSError) as err:
        report.skip(modality.name, str(files[key]), str(err), category(str(err)))
        return
    if not isinstance(stored, bytes) or not stored:
        report.skip(modality.name, str(files[key]), f"{type(modality).__name__}.read_file returned "
                    f"{type(stored).__name__} of length {len(stored) if stored is not None else 0}, not bytes",
                    "read_file returned no bytes")
        return
    row[modality.name] = stored
