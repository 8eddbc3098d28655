"""Your own data → a dataset split (``oskar data ingest``).

Runbook::

    oskar data ingest --out data/mine --split train --videos clips/ \\
        --skeletons skel/ --captions captions.json --labels train_list.txt \\
        --label-map classes.txt --qa qa.json [--strict]
    oskar data ingest --out data/mine --split val --videos val_clips/ ...   # adds a split
    oskar data ingest --out data/mine --split untrimmed --videos long/ \\
        --segments activity_net.json [--label-map classes.txt]              # localization's split
    oskar data ingest --plugin my_pkg.imu --modality imu=imu_npy/ ...       # an added modality

An added modality (one registered by a ``--plugin`` module, see
oskar_ray/modalities/base.py) reads its files from ``--modality NAME=DIR``:
each file with one of its ``file_suffixes`` joins the video of the same stem,
its ``read_file`` bytes stored in the split's ``NAME`` column. A dataset's added
modalities are fixed by its first split (the manifest lists them); a later
split without one stores it as absent.

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

Multiple-choice QA: each question's choices join the answer vocabulary (after
the answers), so evaluation can rank a question's own choices with the
answer head's class logits (``oskar_ray/eval/vqa.py``).

Temporal segments (``--segments``: ActivityNet JSON, THUMOS lists; see
``readers/annotations.py``) are stored as the split's ``segments`` (flat
``[start, end, ...]`` as fractions of the decoded video: seconds divided by
its decoded duration, frames / fps) and ``segment_labels`` (``vocab.actions``
ids) — what localization reads, the same as SynthAction's ``untrimmed``
split. A segment past the video's end is clipped (noted in the report); one
wholly outside it, with start >= end, or with a label missing from
``--label-map`` (when given) is a counted skip naming the file, the video and
the field. Without ``--label-map`` the segment labels extend ``vocab.actions``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..modalities import Modality
from . import store
from .ingest_media import (
    IngestError,
    Report,
    ShardWriter,
    added_modalities,
    category,
    files_by_stem,
    match_stem,
    read_added,
    read_stored_video,
)
from .readers.annotations import (
    QAItem,
    SegmentFile,
    SegmentItem,
    read_captions,
    read_label_map,
    read_labels,
    read_qa,
    read_segments,
)
from .readers.common import ReadError
from .readers.skeleton import SKELETON_EXTENSIONS, read_missing_list, read_skeleton
from .readers.video import VIDEO_EXTENSIONS
from .tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer

REPORT = "ingest_report.json"
#: the split localization reads (oskar_ray/eval/localization.py)
UNTRIMMED = "untrimmed"
#: annotated vs decoded duration beyond this (seconds, or this share of it) is noted: a different cut of the video
DURATION_SLACK_S, DURATION_SLACK = 1.0, 0.05


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
    segments: Path | None = None
    missing: list[Path] = field(default_factory=list)
    #: added modality name -> folder of its files (``--modality NAME=DIR``)
    modalities: dict[str, Path] = field(default_factory=dict)
    strict: bool = False
    #: "encoded": each whole video's container bytes (re-encoded when reencode_short_side / reencode_fps ask),
    #: clips decoded in the data path; "raw": ``frames`` uint8 frames of height x width, decoded here
    video_storage: str = "encoded"
    reencode_short_side: int = 0
    reencode_fps: float = 0.0
    frames: int = 16
    height: int = 32
    width: int = 32
    joints: int = 25
    vocab_size: int = DEFAULT_VOCAB_SIZE


def ingest(opts: IngestOptions, progress: bool = True) -> dict[str, Any]:
    """Add ``opts.split`` to the dataset at ``opts.out``; returns this split's report."""
    manifest = _open_manifest(opts)
    if opts.split in manifest["splits"]:
        raise FileExistsError(f"{opts.out}: split {opts.split!r} exists; ingest under another --split name")
    report = Report(opts.strict)
    videos = files_by_stem(opts.videos, VIDEO_EXTENSIONS, "videos", report)
    if not videos:
        raise FileNotFoundError(f"--videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {opts.videos}")
    skeletons = files_by_stem(opts.skeletons, SKELETON_EXTENSIONS, "skeletons", report)
    added = added_modalities(opts.modalities, opts.out, manifest, report)
    ann = _annotations(opts, report, videos)
    missing = set().union(*(read_missing_list(p) for p in opts.missing)) if opts.missing else set()
    _unmatched(report, videos, {"skeleton": skeletons, **{m.name: files for m, files in added}}, ann)

    action_id = store.extend_vocab(manifest["vocab"]["actions"], ann.names + ann.segment_labels())
    qa_items = [q for items in ann.qa.values() for q in items]
    # choices after the answers: a choice the head has a class for can be ranked by its logit
    answer_id = store.extend_vocab(manifest["vocab"]["answers"],
                                   [q.answer for q in qa_items] + [c for q in qa_items for c in q.choices])
    store.extend_vocab(manifest["vocab"]["question_types"], [q.qtype for q in qa_items])
    shards = ShardWriter(opts.out, opts.split, opts.video_storage, store.extra_modalities(manifest))
    for stem, path in tqdm(sorted(videos.items()), desc=f"ingest {opts.split}", disable=not progress):
        row = _sample(stem, path, opts, report, skeletons, missing, added)
        if row is None:
            continue
        row["captions"] = ann.captions.get(stem, [])
        if stem in ann.labels:
            row["action"] = action_id[ann.names[ann.labels[stem]]]
            row["action_name"] = ann.names[ann.labels[stem]]
        items = ann.qa.get(stem, [])
        row.update(questions=[q.question for q in items], answers=[q.answer for q in items],
                   answer_ids=[answer_id[q.answer] for q in items], question_types=[q.qtype for q in items],
                   choices=[q.choices for q in items])
        if ann.segments is not None:
            _place_segments(row, ann.segments, report, action_id)
        row["attributes"] = json.dumps(row["attributes"])
        shards.add(row)
    shards.flush()
    if not shards.texts:
        raise IngestError(f"{opts.videos}: no sample could be read; see the reasons above "
                          f"({report.summary()})")
    store.add_split(manifest, opts.split, shards.names, len(shards.texts), frames=opts.frames,
                    video_storage=opts.video_storage, labelled=True, has_segments=ann.segments is not None,
                    source=str(opts.videos), presence=shards.presence)
    _ensure_tokenizer(opts, manifest, shards.texts)
    store.save_manifest(opts.out, manifest)
    return _write_report(opts, report, len(shards.texts), len(videos))


def _open_manifest(opts: IngestOptions) -> dict[str, Any]:
    if opts.video_storage not in ("encoded", "raw"):
        raise ValueError(f"--video-storage must be 'encoded' or 'raw', got {opts.video_storage!r}")
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


@dataclass
class Annotations:
    captions: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    qa: dict[str, list[QAItem]] = field(default_factory=dict)
    segments: SegmentFile | None = None

    def segment_labels(self) -> list[str]:
        """Segment class names in first-seen order (already checked against the label map when one is given)."""
        seen = [s.label for items in (self.segments.segments.values() if self.segments else ()) for s in items]
        return list(dict.fromkeys(seen))


def _annotations(opts: IngestOptions, report: Report, videos: dict[str, Path]) -> Annotations:
    ann = Annotations()
    if opts.captions:
        ann.captions, problems = read_captions(opts.captions)
        for item, reason in problems:
            report.skip("caption", item, reason, reason.split(" (")[0])
    if opts.labels and not opts.label_map or opts.label_map and not (opts.labels or opts.segments):
        raise ValueError("--labels and --label-map go together (a list of 'file label' + class names); "
                         "--label-map alone names the classes of --segments")
    if opts.label_map:
        ann.names = read_label_map(opts.label_map)
    if opts.labels:
        ann.labels, problems = read_labels(opts.labels, ann.names)
        for item, reason in problems:
            report.skip("label", item, reason, "bad label line")
    if opts.qa:
        items, problems = read_qa(opts.qa)
        for item, reason in problems:
            report.skip("qa", item, reason, reason.split(" (")[0])
        for q in items:
            ann.qa.setdefault(q.stem, []).append(q)
    if opts.segments:
        ann.segments = _segments(opts, report, videos, ann.names)
    return ann


def _segments(opts: IngestOptions, report: Report, videos: dict[str, Path], names: list[str]) -> SegmentFile:
    if not opts.segments.exists():
        raise FileNotFoundError(f"--segments: {opts.segments} does not exist")
    found = read_segments(opts.segments)
    for item, reason in found.problems:
        report.skip("segment", item, reason, reason.split(" (")[0])
    if found.ambiguous:
        report.notes["segments_ambiguous_ignored"] = found.ambiguous  # THUMOS's unlabelled stretches
    # ActivityNet ids name files v_<id>.mp4 (its download scripts): match those too
    rekey = {vid: f"v_{vid}" for vid in found.segments if vid not in videos and f"v_{vid}" in videos}
    found.segments = {rekey.get(v, v): items for v, items in found.segments.items()}
    found.info = {rekey.get(v, v): info for v, info in found.info.items()}
    if names:
        known = set(names)
        for vid, items in found.segments.items():
            for seg in (s for s in items if s.label not in known):
                report.skip("segment", seg.where, f"label not in the label map (field label {seg.label!r}; "
                            f"--label-map {opts.label_map.name})", "label not in the label map")
            found.segments[vid] = [s for s in items if s.label in known]
        found.segments = {v: items for v, items in found.segments.items() if items}  # all skipped: none left
    if opts.split != UNTRIMMED:
        report.notes["segments_split"] = f"localization reads the split named {UNTRIMMED!r}, not {opts.split!r}"
    report.notes["videos_without_segments"] = sorted(v for v in videos if not found.segments.get(v))
    return found


def _unmatched(report: Report, videos: dict, by_stem: dict[str, dict], ann: Annotations) -> None:
    """Count every item whose stem has no video; ``by_stem``: skeleton and added-modality files by stem."""
    stems = set(videos) | {s[:-4] for s in videos if s.endswith("_rgb")}
    segments = ann.segments.segments if ann.segments else {}
    for kind, keys in (*by_stem.items(), ("caption", ann.captions), ("label", ann.labels), ("qa", ann.qa),
                       ("segment", segments)):
        lost = sorted(set(keys) - stems)
        for stem in lost:
            count = len(keys[stem]) if kind in ("qa", "segment") else 1
            item = keys[stem][0].where if kind == "segment" else stem  # names the segments' file too
            report.skip(kind, item, f"no video with stem {stem!r} ({count} item(s))", "unmatched id (no video)")
    for kind, files in by_stem.items():  # kept without that modality: listed, never silent
        report.notes[f"videos_without_{kind}"] = sorted(s for s in videos if files and match_stem(s, files) is None)


def _sample(stem: str, path: Path, opts: IngestOptions, report: Report, skeletons: dict[str, Path],
            missing: set[str], added: list[tuple[Modality, dict[str, Path]]]) -> dict[str, Any] | None:
    # attributes stay a dict until the row is complete (segments add to them); written as JSON
    row: dict[str, Any] = {"id": stem, "attributes": {"video": str(path)}}
    try:
        row["video"], info = read_stored_video(path, opts)
        row["attributes"].update(info)
    except ReadError as err:
        report.skip("video", str(path), str(err), category(err.reason))
    key = match_stem(stem, skeletons)
    if key is not None and key in missing:
        report.skip("skeleton", str(skeletons[key]), "listed in the official missing-skeleton list",
                    "official missing-skeleton list")
    elif key is not None:
        try:
            seq, info = read_skeleton(skeletons[key], opts.frames, opts.joints)
            row.update(skeleton=seq.tobytes(), skeleton_bodies=info["bodies"])
        except ReadError as err:
            report.skip("skeleton", str(skeletons[key]), str(err), category(err.reason))
    for modality, files in added:
        read_added(row, stem, modality, files, report)
    if not any(name in row for name in ("video", "skeleton", *(m.name for m, _ in added))):
        report.skip("sample", stem, "no modality could be read (video, skeleton"
                    f"{''.join(', ' + m.name for m, _ in added)})", "no readable modality")
        return None
    return row


def _place_segments(row: dict[str, Any], found: SegmentFile, report: Report, action_id: dict[str, int]) -> None:
    """Segments in seconds → ``segments`` as fractions of the decoded video, ``segment_labels`` as action ids."""
    items, annotated = found.segments.get(row["id"], []), found.info.get(row["id"], {})
    attrs = row["attributes"]
    attrs.update({k: v for k, v in annotated.items() if k == "subset"})
    duration = _duration(row, annotated, report)
    if items and duration is None:
        why = ("the video was not decoded" if "video" not in row else
               "the video's frame rate is unknown and the annotation gives no 'duration'")
        for seg in items:
            report.skip("segment", seg.where, f"no duration to place the segment on ({why})", "no video duration")
        return
    flat, labels, seconds = [], [], []
    for seg in items:
        placed = _clip_segment(seg, row["id"], duration, report)
        if placed is not None:
            flat += [placed[0] / duration, placed[1] / duration]
            labels.append(action_id[seg.label])
            seconds.append([round(placed[0], 3), round(placed[1], 3), seg.label])
    row.update(segments=flat, segment_labels=labels)
    attrs.update(duration_s=duration, segments_s=seconds)


def _duration(row: dict[str, Any], annotated: dict[str, Any], report: Report) -> float | None:
    """The decoded duration (frames / fps: where the stored frames come from), else the annotated one."""
    fps, frames = row["attributes"].get("fps", 0.0), row["attributes"].get("source_frames", 0)
    decoded = frames / fps if "video" in row and fps > 0 else None
    stated = annotated.get("duration")
    if decoded and stated and abs(decoded - stated) > max(DURATION_SLACK_S, DURATION_SLACK * decoded):
        report.note("segment_duration_mismatch", {"video": row["id"], "annotated_s": stated,
                                                  "decoded_s": round(decoded, 3),
                                                  "used": "decoded (the stored frames span it)"})
    return decoded if decoded else (stated if "video" in row else None)


def _clip_segment(seg: SegmentItem, video: str, duration: float, report: Report) -> tuple[float, float] | None:
    if seg.end <= 0 or seg.start >= duration:
        report.skip("segment", seg.where, f"segment outside the video (field segment [{seg.start}, {seg.end}] s; "
                    f"video {video} lasts {duration:.2f} s)", "segment outside the video")
        return None
    start, end = max(seg.start, 0.0), min(seg.end, duration)
    if (start, end) != (seg.start, seg.end):
        report.note("segments_clipped", {"item": seg.where, "reason": f"[{seg.start}, {seg.end}] s clipped to "
                                         f"[{start:.3f}, {end:.3f}] s (video {video} lasts {duration:.2f} s)"})
    return start, end


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
    for key, what in (("segments_clipped", "segment(s) clipped to their video's duration"),
                      ("segment_duration_mismatch", "video(s) whose annotated duration differs from the decoded"),
                      ("videos_without_segments", "video(s) have no segment (all background)")):
        if report.get(key):
            print(f"  note: {len(report[key])} {what}")
    if report.get("segments_split"):
        print(f"  note: {report['segments_split']}")
    for key in sorted(k for k in report if k.startswith("videos_without_") and k != "videos_without_segments"):
        if report[key]:
            kind = key[len("videos_without_"):]
            print(f"  note: {len(report[key])} video(s) have no {kind} file (kept without the {kind} modality)")
    print(f"details: {out / REPORT}")
