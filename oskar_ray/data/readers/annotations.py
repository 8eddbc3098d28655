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
* labels — mmaction2 list ``file label`` lines + a label map (class name per line, line i = id i).
"""

from __future__ import annotations

import csv
import json
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
        if not str(row["question"]).strip() or not str(row["answer"]).strip():
            problems.append((f"{path.name}[{i}]", "empty question or answer"))
            continue
        items.append(QAItem(stem, str(row["question"]).strip(), str(row["answer"]).strip(),
                            _question_word(str(row["question"]))))
    return items, problems


def _rows(path: Path, delimiter: str) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:  # newline="": csv handles CRLF itself
        return list(csv.DictReader(fh, delimiter=delimiter))


def _qa_tgif(path: Path) -> tuple[list[QAItem], Problems]:
    items, problems = [], []
    for n, row in enumerate(_rows(path, "\t"), start=2):
        where = f"{path.name}:{n}"
        try:
            question, answer = row["question"].strip(), row["answer"].strip()
            if "a1" in row:  # action / transition: multiple choice
                choices = [row[f"a{k}"].strip() for k in range(1, 6)]
                answer, qtype = choices[int(answer)], "transition" if "transition" in path.name else "action"
            elif "type" in row:  # frameqa
                choices, qtype = [], "frameqa_" + _FRAMEQA_TYPES.get(row["type"].strip(), "other")
            else:
                choices, qtype = [], "count"
            if not question or not answer:
                raise ValueError("empty question or answer")
            items.append(QAItem(stem_of(row["gif_name"].strip()), question, answer, qtype, choices))
        except (KeyError, ValueError, IndexError, AttributeError) as err:
            problems.append((where, f"bad TGIF-QA row ({type(err).__name__}: {err})"))
    return items, problems


def _qa_nextqa(path: Path) -> tuple[list[QAItem], Problems]:
    items, problems = [], []
    for n, row in enumerate(_rows(path, ","), start=2):
        try:
            choices = [row[f"a{k}"].strip() for k in range(5)]
            answer = choices[int(row["answer"])]
            if not row["question"].strip() or not answer:
                raise ValueError("empty question or answer")
            items.append(QAItem(row["video"].strip(), row["question"].strip(), answer,
                                "nextqa_" + row["type"].strip(), choices))
        except (KeyError, ValueError, IndexError, AttributeError) as err:
            problems.append((f"{path.name}:{n}", f"bad NExT-QA row ({type(err).__name__}: {err})"))
    return items, problems
