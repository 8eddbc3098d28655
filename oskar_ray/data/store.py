"""The on-disk dataset: ``manifest.json`` + Parquet shards per split.

Layout::

    DIR/manifest.json            schema version, modalities, shapes, splits, vocabularies, tokenizer
    DIR/tokenizer.json           BPE text tokenizer (see tokenizer.py)
    DIR/<split>/part-00000.parquet
    DIR/ingest_report.json       (ingested datasets) every skipped item with its reason

One row per clip (see :data:`SCHEMA`). Video is stored either whole and encoded
(``splits.<s>.video_storage: encoded``, what ``oskar data ingest`` writes: the
container's bytes, clips decoded per visit by ``encoded_video.py``) or *decoded and
resized* as raw uint8 ``(T, H, W, 3)`` bytes (``raw``: SynthAction, ``ingest
--video-storage raw``); skeletons as raw float32 ``(T, J, 3)``
bytes; a modality absent from a row is an empty byte string and
``present_<modality>`` is false. An added modality (``ingest --modality
NAME=DIR``, oskar_ray/modalities/base.py) gets a binary ``NAME`` column with the
bytes its ``read_file`` returned and a ``present_NAME`` flag (:func:`schema`); the
manifest's ``modalities`` lists it. Why SynthAction keeps raw frames:
at 16×32×32 a clip is 48 KiB raw and decoding is a ``np.frombuffer`` (~µs),
while re-encoding to H.264/MPEG-4 saves disk but costs a PyAV container open
and decode per clip (~ms) in the data path; ``experiments/bench_data.py
--storage`` measures both. Label ids (``action``, ``answer_ids``) index the
manifest vocabularies, which only ever grow (appending keeps ids stable when
another split is ingested). ``-1`` means "no label" (e.g. the pretrain split).

Read with ``ray.data.read_parquet(split_paths(DIR, split))`` or pandas/pyarrow.
``DIR`` may be an object-store URI (``s3://bucket/ds``, ``gs://...``, ``file://...``):
the manifest is read through pyarrow filesystems (:mod:`oskar_ray.storage`),
shard paths stay URIs (Ray Data and pyarrow read them directly) and
:func:`tokenizer_file` hands back a node-local copy of the tokenizer. Writers
(``oskar data synth|ingest``) write locally; upload a finished dataset with
``python -m oskar_ray.storage copy DIR s3://bucket/prefix/DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
#: rows per Parquet shard: big enough for efficient reads, small enough to stream
ROWS_PER_SHARD = 512
#: rows per shard of whole encoded videos (~1 MB each): a shard is one decode task's read (several in turn on a
#: Kinetics-sized stream, data/pipeline.py MAX_STREAM_ITEMS), so
#: small shards let many decode tasks run at once (experiments/bench_decode.py)
ENCODED_ROWS_PER_SHARD = 16

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("video", pa.binary()),
    ("skeleton", pa.binary()),
    ("skeleton_bodies", pa.int32()),
    ("captions", pa.list_(pa.string())),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.string())),
    ("answer_ids", pa.list_(pa.int64())),
    ("question_types", pa.list_(pa.string())),
    ("choices", pa.list_(pa.list_(pa.string()))),
    ("action", pa.int64()),
    ("action_name", pa.string()),
    ("segments", pa.list_(pa.float32())),
    ("segment_labels", pa.list_(pa.int64())),
    ("present_video", pa.bool_()),
    ("present_skeleton", pa.bool_()),
    ("present_text", pa.bool_()),
    ("attributes", pa.string()),
])

BUILTIN_MODALITIES = ("video", "skeleton", "text")


def schema(extra: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """The row schema of a dataset whose added modalities are ``extra`` (manifest ``modalities`` beyond the
    built-ins)."""
    out = SCHEMA
    for name in extra:
        if name in SCHEMA.names or f"present_{name}" in SCHEMA.names:
            raise ValueError(f"modality {name!r}: its column would clash with the stored column {name!r}")
        out = out.append(pa.field(name, pa.binary())).append(pa.field(f"present_{name}", pa.bool_()))
    return out


def extra_modalities(manifest: dict[str, Any]) -> list[str]:
    """The dataset's added modalities (stored in their own columns), in the order of its manifest."""
    return [m for m in manifest.get("modalities", []) if m not in BUILTIN_MODALITIES]


_DEFAULTS: dict[str, Any] = {
    "video": b"", "skeleton": b"", "skeleton_bodies": 0, "captions": [], "questions": [], "answers": [],
    "answer_ids": [], "question_types": [], "choices": [], "action": -1, "action_name": "",
    "segments": [], "segment_labels": [], "attributes": "{}",
}


def complete_row(row: dict[str, Any], extra: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Fill defaults and presence flags; raise on unknown keys (a typo would otherwise vanish)."""
    unknown = set(row) - set(schema(extra).names)
    if unknown:
        raise ValueError(f"row {row.get('id')!r}: unknown column(s) {sorted(unknown)}")
    full = {**_DEFAULTS, **{name: b"" for name in extra}, **row}
    for name in extra:
        full.setdefault(f"present_{name}", len(full[name]) > 0)
    full.setdefault("present_video", len(full["video"]) > 0)
    full.setdefault("present_skeleton", len(full["skeleton"]) > 0)
    full.setdefault("present_text", any(c.strip() for c in full["captions"]))
    return full


def write_shard(rows: list[dict[str, Any]], path: Path, extra: tuple[str, ...] | list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([complete_row(r, extra) for r in rows], schema=schema(extra))
    # zstd: skeleton/text compress well; raw frames with texture noise barely do, but it is cheap
    pq.write_table(table, path, compression="zstd", row_group_size=128)
    return path


def write_split(rows: list[dict[str, Any]], root: Path, split: str, start_shard: int = 0,
                extra: tuple[str, ...] | list[str] = (), rows_per_shard: int = ROWS_PER_SHARD) -> list[str]:
    """Write rows as ``rows_per_shard``-row shards; returns paths relative to ``root``."""
    names = []
    for i in range(0, len(rows), rows_per_shard):
        rel = f"{split}/part-{start_shard + i // rows_per_shard:05d}.parquet"
        write_shard(rows[i:i + rows_per_shard], root / rel, extra)
        names.append(rel)
    return names


def new_manifest(shapes: dict[str, int], source: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "modalities": list(BUILTIN_MODALITIES),
        "shapes": shapes,
        "splits": {},
        "vocab": {"actions": [], "answers": [], "question_types": []},
        "tokenizer": "tokenizer.json",
        "samples": 0,
        "storage": {"video": "per split (splits.<s>.video_storage): encoded container bytes, or raw uint8 "
                              "(T, H, W, 3) decoded + resized",
                    "skeleton": "float32 (T, J, 3) raw bytes, centred + scaled"},
    }


def add_split(manifest: dict[str, Any], split: str, shards: list[str], samples: int, **info: Any) -> None:
    manifest["splits"][split] = {"samples": samples, "shards": shards, **info}
    manifest["samples"] = sum(s["samples"] for s in manifest["splits"].values())


def save_manifest(root: str | Path, manifest: dict[str, Any]) -> str:
    """Write ``manifest.json`` atomically (a reader never sees half a manifest); local or URI."""
    storage.makedirs(root)
    return storage.write_text(manifest_path(root), json.dumps(manifest, indent=2))


def manifest_path(root: str | Path) -> str:
    return storage.join(root, MANIFEST)


def load_manifest(root: str | Path) -> dict[str, Any]:
    path = manifest_path(root)
    try:
        text = storage.read_text(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: no manifest.json; create it with `oskar data synth|ingest`") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} unsupported (expected {SCHEMA_VERSION})")
    for key in ("splits", "shapes", "vocab", "tokenizer"):
        if key not in manifest:
            raise ValueError(f"{path}: missing field {key!r}")
    return manifest


def split_info(root: str | Path, split: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = manifest or load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{manifest_path(root)}: no split {split!r} (have {sorted(manifest['splits'])})")
    return manifest["splits"][split]


def split_paths(root: str | Path, split: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Shard locations of one split (what ``ray.data.read_parquet`` takes): absolute local
    paths for a local dataset, URIs for one on object storage."""
    # root="": a relative dataset path stays relative to the working directory, never to $OSKAR_STORAGE
    return [storage.resolve(storage.join(root, rel), root="") for rel in split_info(root, split, manifest)["shards"]]


def tokenizer_file(root: str | Path, manifest: dict[str, Any] | None = None) -> str:
    """A local path to the dataset's tokenizer file (downloaded and cached per node for a URI dataset)."""
    manifest = manifest or load_manifest(root)
    return storage.local_file(storage.join(root, manifest["tokenizer"]))


def extend_vocab(vocab: list[str], items: list[str]) -> dict[str, int]:
    """Append unseen items in first-seen order; returns item → id (existing ids never move)."""
    for item in items:
        if item not in vocab:
            vocab.append(item)
    return {item: i for i, item in enumerate(vocab)}
