"""Your own data → a dataset split (``oskar data ingest``).

Runbook::

    oskar data ingest --out data/mine --split train --videos clips/ \\
        --skeletons skel/ --captions captions.json --labels train_list.txt \\
        --label-map classes.txt --qa qa.json [--strict]
    oskar data ingest --out data/mine --split val --videos val_clips/ ...   # adds a split

Samples are matched by file *stem*: ``vid12.mp4`` ↔ ``vid12.skeleton`` (or
``vid12.npy``) ↔ caption key ``vid12.mp4`` ↔ label line ``vid12.mp4 3`` ↔
MSVD-style QA ``video_id`` 12. NTU RGB videos named ``<sample>_rgb.avi`` also
match ``<sample>.skeleton``. A sample keeps whatever modalities could be read
(``present_<modality>`` marks the rest); annotations whose stem has no video
are skipped. Every skip — undecodable/empty video, truncated skeleton, NaN
joints, a sample on the official missing-skeleton list, an id without a match,
an empty caption, a bad annotation row — is counted with its reason in
``DIR/ingest_report.json`` (per split) and summarised on the console;
``--strict`` turns the first one into an error instead.

A second split reuses the dataset's tokenizer and appends to its label
vocabularies (existing ids never change); shapes must match the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import store
from .readers.annotations import QAItem, read_captions, read_label_map, read_labels, read_qa
from .readers.common import ReadError
from .readers.skeleton import SKELETON_EXTENSIONS, read_missing_list, read_skeleton
from .readers.video import VIDEO_EXTENSIONS, read_video
from .tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer

REPORT = "ingest_report.json"


class IngestError(RuntimeError):
    """Raised under --strict for the first skipped item."""


@dataclass
class IngestOptions:
    out: Path
    split: str
    videos: Path
    skeletons: Path | None = None
    captions: Path | None = None
    labels: Path | None = None
    label_map: Path | None = None
    qa: Path | None = None
    missing: list[Path] = field(default_factory=list)
    strict: bool = False
    frames: int = 16
    height: int = 32
    width: int = 32
    joints: int = 25
    vocab_size: int = DEFAULT_VOCAB_SIZE


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

    def summary(self) -> dict[str, int]:
        return dict(Counter(f"{s['kind']}: {s['category']}" for s in self.skips))


def _files(folder: Path | None, extensions: tuple[str, ...], what: str, report: Report) -> dict[str, Path]:
    if folder is None:
        return {}
    if not folder.is_dir():
        raise FileNotFoundError(f"--{what}: {folder} is not a directory")
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


def _match_stem(stem: str, available: dict[str, Any]) -> str | None:
    if stem in available:
        return stem
    if stem.endswith("_rgb") and stem[:-4] in available:  # NTU RGB+D naming
        return stem[:-4]
    return None


def ingest(opts: IngestOptions, progress: bool = True) -> dict[str, Any]:
    """Add ``opts.split`` to the dataset at ``opts.out``; returns this split's report."""
    manifest = _open_manifest(opts)
    if opts.split in manifest["splits"]:
        raise FileExistsError(f"{opts.out}: split {opts.split!r} exists; ingest under another --split name")
    report = Report(opts.strict)
    videos = _files(opts.videos, VIDEO_EXTENSIONS, "videos", report)
    if not videos:
        raise FileNotFoundError(f"--videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {opts.videos}")
    skeletons = _files(opts.skeletons, SKELETON_EXTENSIONS, "skeletons", report)
    captions, labels, label_names, qa = _annotations(opts, report)
    missing = set().union(*(read_missing_list(p) for p in opts.missing)) if opts.missing else set()
    _unmatched(report, videos, skeletons, captions, labels, qa)

    actions = manifest["vocab"]["actions"]
    action_id = store.extend_vocab(actions, label_names)
    answer_id = store.extend_vocab(manifest["vocab"]["answers"], [q.answer for items in qa.values() for q in items])
    store.extend_vocab(manifest["vocab"]["question_types"], [q.qtype for items in qa.values() for q in items])
    rows = []
    for stem, path in tqdm(sorted(videos.items()), desc=f"ingest {opts.split}", disable=not progress):
        row = _sample(stem, path, opts, report, skeletons, missing)
        if row is None:
            continue
        row["captions"] = captions.get(stem, [])
        if stem in labels:
            row["action"] = action_id[label_names[labels[stem]]]
            row["action_name"] = label_names[labels[stem]]
        items = qa.get(stem, [])
        row.update(questions=[q.question for q in items], answers=[q.answer for q in items],
                   answer_ids=[answer_id[q.answer] for q in items], question_types=[q.qtype for q in items],
                   choices=[q.choices for q in items])
        rows.append(row)
    if not rows:
        raise IngestError(f"{opts.videos}: no sample could be read; see the reasons above "
                          f"({report.summary()})")
    shards = store.write_split(rows, opts.out, opts.split)
    store.add_split(manifest, opts.split, shards, len(rows), frames=opts.frames, labelled=True,
                    has_segments=False, source=str(opts.videos))
    _ensure_tokenizer(opts, manifest, rows)
    store.save_manifest(opts.out, manifest)
    return _write_report(opts, report, len(rows), len(videos))


def _open_manifest(opts: IngestOptions) -> dict[str, Any]:
    shapes = {"frames": opts.frames, "height": opts.height, "width": opts.width, "channels": 3,
              "joints": opts.joints}
    if not (opts.out / store.MANIFEST).exists():
        return store.new_manifest(shapes, source="ingest")
    manifest = store.load_manifest(opts.out)
    for key in ("height", "width", "joints"):
        if manifest["shapes"][key] != shapes[key]:
            raise ValueError(f"--{key} {shapes[key]} differs from {opts.out}/manifest.json shapes.{key} "
                             f"{manifest['shapes'][key]}: a dataset has one frame size and joint count")
    return manifest


def _annotations(opts: IngestOptions, report: Report):
    captions: dict[str, list[str]] = {}
    labels: dict[str, int] = {}
    names: list[str] = []
    qa: dict[str, list[QAItem]] = {}
    if opts.captions:
        captions, problems = read_captions(opts.captions)
        for item, reason in problems:
            report.skip("caption", item, reason, reason.split(" (")[0])
    if opts.labels or opts.label_map:
        if not (opts.labels and opts.label_map):
            raise ValueError("--labels and --label-map go together (a list of 'file label' + class names)")
        names = read_label_map(opts.label_map)
        labels, problems = read_labels(opts.labels, names)
        for item, reason in problems:
            report.skip("label", item, reason, "bad label line")
    if opts.qa:
        items, problems = read_qa(opts.qa)
        for item, reason in problems:
            report.skip("qa", item, reason, reason.split(" (")[0])
        for q in items:
            qa.setdefault(q.stem, []).append(q)
    return captions, labels, names, qa


def _unmatched(report: Report, videos: dict, skeletons: dict, captions: dict, labels: dict, qa: dict) -> None:
    stems = set(videos) | {s[:-4] for s in videos if s.endswith("_rgb")}
    for kind, keys in (("skeleton", skeletons), ("caption", captions), ("label", labels), ("qa", qa)):
        lost = sorted(set(keys) - stems)
        for stem in lost:
            count = len(keys[stem]) if kind == "qa" else 1
            report.skip(kind, stem, f"no video with stem {stem!r} ({count} item(s))", "unmatched id (no video)")
    report.notes["videos_without_skeleton"] = sorted(s for s in videos if skeletons
                                                      and _match_stem(s, skeletons) is None)


def _sample(stem: str, path: Path, opts: IngestOptions, report: Report, skeletons: dict[str, Path],
            missing: set[str]) -> dict[str, Any] | None:
    row: dict[str, Any] = {"id": stem, "attributes": json.dumps({"video": str(path)})}
    try:
        clip, _ = read_video(path, opts.frames, opts.height, opts.width)
        row["video"] = clip.tobytes()
    except ReadError as err:
        report.skip("video", str(path), str(err), _category(err.reason))
    key = _match_stem(stem, skeletons)
    if key is not None and key in missing:
        report.skip("skeleton", str(skeletons[key]), "listed in the official missing-skeleton list",
                    "official missing-skeleton list")
    elif key is not None:
        try:
            seq, info = read_skeleton(skeletons[key], opts.frames, opts.joints)
            row.update(skeleton=seq.tobytes(), skeleton_bodies=info["bodies"])
        except ReadError as err:
            report.skip("skeleton", str(skeletons[key]), str(err), _category(err.reason))
    if "video" not in row and "skeleton" not in row:
        report.skip("sample", stem, "neither video nor skeleton could be read", "no readable modality")
        return None
    return row


def _category(reason: str) -> str:
    # "truncated: file ends where ..." → "truncated"; "line 7: NaN/inf joint ..." → "NaN/inf joint ..."
    text = reason.split(": ", 1)[1] if reason.startswith("line ") and ": " in reason else reason
    return text.split(" (")[0].split(":")[0][:60]


def _ensure_tokenizer(opts: IngestOptions, manifest: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path = opts.out / manifest["tokenizer"]
    if path.exists():
        return  # shared by every split: ids must not change under an already-trained model
    texts = [t for r in rows for t in (*r["captions"], *r["questions"], *(c for ch in r["choices"] for c in ch))]
    if not texts:
        texts = [r["action_name"] for r in rows if r.get("action_name")] or ["[UNK]"]
    train_tokenizer(texts, path, opts.vocab_size)


def _write_report(opts: IngestOptions, report: Report, written: int, found: int) -> dict[str, Any]:
    split_report = {"split": opts.split, "videos_found": found, "samples_written": written,
                    "skipped": len(report.skips), "by_reason": report.summary(), "skips": report.skips,
                    **report.notes}
    path = opts.out / REPORT
    full = json.loads(path.read_text()) if path.exists() else {"splits": {}}
    full["splits"][opts.split] = split_report
    path.write_text(json.dumps(full, indent=2))
    return split_report


def print_summary(report: dict[str, Any], out: Path) -> None:
    print(f"ingest {report['split']}: {report['samples_written']} samples written from "
          f"{report['videos_found']} videos; {report['skipped']} item(s) skipped")
    for reason, count in sorted(report["by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  {count:5d}  {reason}")
    if report.get("videos_without_skeleton"):
        print(f"  note: {len(report['videos_without_skeleton'])} video(s) have no skeleton file "
              f"(kept without the skeleton modality)")
    print(f"details: {out / REPORT}")
