"""Annotation files → per-video-stem captions, QA items and labels.

Every reader returns ``(data, problems)``: ``problems`` is a list of
``(item, reason)`` for entries that cannot be used (empty caption, unknown
label id, unparsable row …) so ingestion counts and reports them.
Keys are *stems*: ``vid12.mp4`` → ``vid12``; MSVD/MSRVTT-QA integer
``video_id`` 12 → ``vid12``; MSR-VTT ``video12`` stays ``video12``.

Formats (detected from content, not extension):

* captions — mmaction2 video–text JSON ``{file: [caption, ...]}``; MSR-VTT
  ``videodatainfo`` JSON ``{"sentences": [{"video_id", "caption"}], ...}``;
* QA — MSVD-QA/MSRVTT-QA JSON ``[{question, answer, video_id}]``; TGIF-QA
  tab-separated files with CRLF (action/transition: 5 choices + answer index,
  count: a number, frameqa: answer + type code); NExT-QA CSV (5 choices, answer index);
* labels — mmaction2 list ``file label`` lines + a label map (class name per line, line i = id i);
* temporal segments (untrimmed videos) — ActivityNet JSON ``{"database": {video_id: {"duration", "subset",
  "annotations": [{"label", "segment": [start_s, end_s]}]}}}`` (also the bare ``{video_id: {...}}`` form and
  ``segments`` for ``annotations``); THUMOS lists, one file per class ``<class>_val.txt`` of lines
  ``video start end``, or one file of lines ``video start end label``; a folder of such files.

A question whose choices do not contain its answer is a problem naming the file, the row and the question
(multiple-choice scoring ranks a question's own choices, so its answer must be one of them).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ReadError

Problems = list[tuple[str, str]]
_FRAMEQA_TYPES = {"0": "object", "1": "number", "2": "color", "3": "location"}


@dataclass
class QAItem:
    stem: str
    question: str
    answer: str
    qtype: str
    choices: list[str] = field(default_factory=list)


class ChoiceError(ValueError):
    """A multiple-choice question whose answer is not one of its choices."""


def _chosen(choices: list[str], answer: Any, question: str, *, by_index: bool) -> str:
    """The answer among ``choices``: given as an index (TGIF-QA, NExT-QA, an int in JSON) or as its text."""
    text = str(answer).strip()
    if by_index and text.lstrip("-").isdigit() and 0 <= int(text) < len(choices):
        return choices[int(text)]
    if not by_index and text in choices:
        return text
    raise ChoiceError(f"answer not among its choices (question {question!r}: answer {text!r}"
                      f"{' (an index)' if by_index else ''}, choices {choices})")


def stem_of(name: Any) -> str:
    if isinstance(name, int):
        return f"vid{name}"
    return Path(str(name)).stem if "." in Path(str(name)).name else str(name)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReadError(path, f"not valid JSON: {err}") from None


# --- captions ------------------------------------------------------------------
def read_captions(path: str | Path) -> tuple[dict[str, list[str]], Problems]:
    path = Path(path)
    data = _load_json(path)
    pairs: list[tuple[str, Any]] = []
    if isinstance(data, dict) and "sentences" in data:  # MSR-VTT videodatainfo
        for i, s in enumerate(data["sentences"]):
            if not isinstance(s, dict) or "video_id" not in s:
                raise ReadError(path, f"sentences[{i}]: missing field 'video_id'")
            pairs.append((str(s["video_id"]), s.get("caption")))
    elif isinstance(data, dict):  # mmaction2 {file: [captions]}
        for key, value in data.items():
            for cap in value if isinstance(value, list) else [value]:
                pairs.append((key, cap))
    else:
        raise ReadError(path, "captions JSON must be {file: [captions]} or MSR-VTT {'sentences': [...]}")
    captions: dict[str, list[str]] = {}
    problems: Problems = []
    for key, cap in pairs:
        if not isinstance(cap, str) or not cap.strip():
            problems.append((f"{path.name}:{key}", f"empty caption ({cap!r})"))
            continue
        captions.setdefault(stem_of(key), []).append(cap.strip())
    return captions, problems


# --- labels --------------------------------------------------------------------
def read_label_map(path: str | Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise ReadError(path, "label map must list one non-empty class name per line (line i = class i)")
    return names


def read_labels(path: str | Path, names: list[str]) -> tuple[dict[str, int], Problems]:
    """mmaction2 ``file label`` list → {stem: class id} (ids index ``names``)."""
    path = Path(path)
    labels: dict[str, int] = {}
    problems: Problems = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[-1].lstrip("-").isdigit():
            problems.append((f"{path.name}:{n}", f"line must be 'file label', got {line!r}"))
            continue
        label = int(fields[-1])
        if not 0 <= label < len(names):
            problems.append((f"{path.name}:{n}", f"label {label} outside the label map (0..{len(names) - 1})"))
            continue
        labels[stem_of(" ".join(fields[:-1]))] = label
    return labels, problems


# --- QA ------------------------------------------------------------------------
def read_qa(path: str | Path) -> tuple[list[QAItem], Problems]:
    path = Path(path)
    head = path.read_bytes()[:4096].decode("utf-8-sig", errors="replace").lstrip()
    if head.startswith("["):
        return _qa_json(path)
    first = head.splitlines()[0] if head else ""
    if "\t" in first and "gif_name" in first:
        return _qa_tgif(path)
    if first.startswith("video,") and "a0" in first:
        return _qa_nextqa(path)
    raise ReadError(path, "unknown QA format (expected MSVD/MSRVTT-QA JSON, TGIF-QA TSV or NExT-QA CSV)")


def _question_word(question: str) -> str:
    word = question.strip().split(" ", 1)[0].lower() if question.strip() else ""
    return word if word in ("what", "who", "how", "when", "where", "why", "which") else "other"


def _qa_json(path: Path) -> tuple[list[QAItem], Problems]:
    items, problems = [], []
    for i, row in enumerate(_load_json(path)):
        missing = [k for k in ("question", "answer", "video_id") if not isinstance(row, dict) or k not in row]
        if missing:
            problems.append((f"{path.name}[{i}]", f"missing field(s) {missing}"))
            continue
        vid = row["video_id"]
        stem = f"vid{vid}" if isinstance(vid, int) else stem_of(vid)
        question, answer = str(row["question"]).strip(), str(row["answer"]).strip()
        if not question or not answer:
            problems.append((f"{path.name}[{i}]", "empty question or answer"))
            continue
        try:
            choices = _json_choices(row.get("choices"))
            if choices:  # optional: multiple choice, the answer given as its text or its index
                answer = _chosen(choices, row["answer"], question, by_index=isinstance(row["answer"], int))
        except ValueError as err:
            problems.append((f"{path.name}[{i}]", str(err)))
            continue
        items.append(QAItem(stem, question, answer, _question_word(question), choices))
    return items, problems


def _json_choices(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str | int | float) for c in value):
        raise ValueError(f"field 'choices' must be a list of strings (got {value!r})")
    return [str(c).strip() for c in value]


def _rows(path: Path, delimiter: str) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:  # newline="": csv handles CRLF itself
        return list(csv.DictReader(fh, delimiter=delimiter))


def _qa_tgif(path: Path) -> tuple[list[QAItem], Problems]:
    items, problems = [], []
    for n, row in enumerate(_rows(path, "\t"), start=2):
        try:
            question, answer = row["question"].strip(), row["answer"].strip()
            if "a1" in row:  # action / transition: multiple choice
                choices = [row[f"a{k}"].strip() for k in range(1, 6)]
                answer = _chosen(choices, answer, question, by_index=True)
                qtype = "transition" if "transition" in path.name else "action"
            elif "type" in row:  # frameqa
                choices, qtype = [], "frameqa_" + _FRAMEQA_TYPES.get(row["type"].strip(), "other")
            else:
                choices, qtype = [], "count"
            if not question or not answer:
                raise ValueError("empty question or answer")
            items.append(QAItem(stem_of(row["gif_name"].strip()), question, answer, qtype, choices))
        except ChoiceError as err:
            problems.append((f"{path.name}:{n}", str(err)))
        except (KeyError, ValueError, IndexError, AttributeError) as err:
            problems.append((f"{path.name}:{n}", f"bad TGIF-QA row ({type(err).__name__}: {err})"))
    return items, problems


def _qa_nextqa(path: Path) -> tuple[list[QAItem], Problems]:
    items, problems = [], []
    for n, row in enumerate(_rows(path, ","), start=2):
        try:
            choices = [row[f"a{k}"].strip() for k in range(5)]
            question = row["question"].strip()
            answer = _chosen(choices, row["answer"], question, by_index=True)
            if not question or not answer:
                raise ValueError("empty question or answer")
            items.append(QAItem(row["video"].strip(), question, answer, "nextqa_" + row["type"].strip(), choices))
        except ChoiceError as err:
            problems.append((f"{path.name}:{n}", str(err)))
        except (KeyError, ValueError, IndexError, AttributeError) as err:
            problems.append((f"{path.name}:{n}", f"bad NExT-QA row ({type(err).__name__}: {err})"))
    return items, problems


# --- temporal segments ---------------------------------------------------------------
@dataclass
class SegmentItem:
    """One labelled stretch of an untrimmed video, in seconds as annotated; ``where`` names file and entry."""

    video: str
    label: str
    start: float
    end: float
    where: str


@dataclass
class SegmentFile:
    segments: dict[str, list[SegmentItem]] = field(default_factory=dict)
    #: per video: what the annotation says besides segments (``duration`` in seconds, ``subset``)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: Problems = field(default_factory=list)
    #: THUMOS 'Ambiguous' marks read and ignored (a standard part of its annotations: a note, not a skip)
    ambiguous: int = 0


#: THUMOS marks stretches too unclear to label "Ambiguous": a mark to ignore, never a class
THUMOS_AMBIGUOUS = "Ambiguous"


def read_segments(path: str | Path) -> SegmentFile:
    """ActivityNet JSON, THUMOS list(s) or a folder of them → segments per video id (see the module doc)."""
    path = Path(path)
    out = SegmentFile()
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".txt") and p.is_file()) \
        if path.is_dir() else [path]
    if not files:
        raise ReadError(path, "no .json or .txt segment files in the folder")
    for file in files:
        head = file.read_bytes()[:4096].decode("utf-8-sig", errors="replace").lstrip()
        (_segments_json if head.startswith(("{", "[")) else _segments_thumos)(file, out)
    return out


def _segments_json(path: Path, out: SegmentFile) -> None:
    data = _load_json(path)
    data = data.get("database", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ReadError(path, "segments JSON must be {'database': {video_id: {...}}} or {video_id: {...}}")
    for key, entry in data.items():
        vid, where = stem_of(str(key)), f"{path.name}:{key}"
        if not isinstance(entry, dict):
            out.problems.append((where, f"video entry must be an object (got {type(entry).__name__})"))
            continue
        duration = entry.get("duration")
        info = out.info.setdefault(vid, {})
        if isinstance(duration, int | float) and math.isfinite(duration) and duration > 0:
            info["duration"] = float(duration)
        if "subset" in entry:
            info["subset"] = entry["subset"]
        field_name = "annotations" if "annotations" in entry else "segments"
        anns = entry.get(field_name) or []
        if not isinstance(anns, list):
            out.problems.append((where, f"field {field_name!r} must be a list (got {type(anns).__name__})"))
            continue
        for k, ann in enumerate(anns):
            _add_json_segment(out, vid, ann, f"{where}.{field_name}[{k}]")


def _add_json_segment(out: SegmentFile, vid: str, ann: Any, where: str) -> None:
    if not isinstance(ann, dict) or not isinstance(ann.get("label"), str) or not ann["label"].strip():
        out.problems.append((where, f"missing or empty field 'label' ({ann!r})"))
        return
    seg = ann.get("segment")
    if not isinstance(seg, list | tuple) or len(seg) != 2:
        out.problems.append((where, f"field 'segment' must be [start_s, end_s] ({seg!r})"))
        return
    _add_segment(out, vid, ann["label"].strip(), seg[0], seg[1], where, "field 'segment'")


def _add_segment(out: SegmentFile, vid: str, label: str, start: Any, end: Any, where: str, fields: str) -> None:
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        out.problems.append((where, f"start/end not numbers in {fields} ({start!r}, {end!r})"))
        return
    if not (math.isfinite(start) and math.isfinite(end)):
        out.problems.append((where, f"start/end not finite in {fields} ({start}, {end})"))
    elif start >= end:
        out.problems.append((where, f"start >= end in {fields} ({start}, {end})"))
    else:
        out.segments.setdefault(vid, []).append(SegmentItem(vid, label, start, end, where))
        out.info.setdefault(vid, {})


def _segments_thumos(path: Path, out: SegmentFile) -> None:
    """``video start end`` (class from the file name, ``BaseballPitch_val.txt``) or ``video start end label``."""
    stem = path.stem
    file_class = stem.rsplit("_", 1)[0] if stem.rsplit("_", 1)[-1] in ("val", "test", "train") else stem
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path.name}:{n}"
        if len(fields) < 3:
            out.problems.append((where, f"line must be 'video start end [label]' ({line.strip()!r})"))
            continue
        label = " ".join(fields[3:]) or file_class
        if label == THUMOS_AMBIGUOUS:
            out.ambiguous += 1
            continue
        _add_segment(out, stem_of(fields[0]), label, fields[1], fields[2], f"{where} video {fields[0]}",
                     "fields start/end")
