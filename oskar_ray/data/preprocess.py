"""Stored rows → the model's batch dict: a pure numpy function, with or without Ray.

``preprocess_batch`` is what Ray Data's ``map_batches`` runs (pipeline.py) and
what single-process training and unit tests call directly on a pandas/numpy
batch. Steps, per batch of stored rows:

1. video (``video_batch.py``): raw uint8 bytes → (T, 3, H, W) float32, uniform temporal resampling to
   ``modalities.video.frames`` (nearest spatial resampling if the stored size
   differs), a whole batch at a time — or, for a split stored encoded, a clip decoded per visit
   (``encoded_video.py``: random window + resized crop when training; undecodable
   rows counted in ``skipped_video``, short ones in ``padded_video``) — normalised per clip and
   channel (``data.video_norm=clip``: removes
   the colour shortcut of docs/design.md) or with the dataset statistics;
2. skeleton: raw float32 bytes → (T, J, 3), resampled to ``modalities.skeleton.frames``;
3. light augmentation when training (``data.augment``): small spatial shifts (raw video; encoded video gets
   its random resized crop), skeleton rotation about the vertical axis, scale jitter and noise — no
   horizontal flip unless ``data.hflip`` (encoded video): it would swap "left"/"right" labels and captions;
4. captions (one picked at random when training, the first otherwise) and a
   question tokenized to ``modalities.text.max_len``;
5. labels (labelled splits only): ``action``, ``answer``, ``question_type``,
   ``segment`` (first segment, untrimmed splits);
6. an added modality (oskar_ray/modalities/base.py): its stored bytes through its
   ``decode`` (and ``augment`` when training), zeros where absent;
7. token-budget masks ``input_index`` / ``target_index`` drawn CPU-side with
   ``oskar_ray.model.budget.TokenBudgetSampler`` (when importable).

Output columns are flat (``present_video`` …) because Ray Data batches are
flat; :func:`nest_present` builds the ``present`` dict of the batch (docs/design.md, "Contracts").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..modalities import BUILTIN_MODALITIES, modality_class
from . import store
from .encoded_video import ENCODED, RAW
from .readers.common import uniform_indices
from .tokenizer import check_tokenizer, load_tokenizer
from .video_batch import video_batch

#: per-row counters of the data path (summed by the training loop into data/<counter> metrics)
COUNTERS = ("skipped_video", "padded_video")
#: columns the pipeline reads from the store (the rest is metadata for eval/reporting)
READ_COLUMNS = ["id", "video", "skeleton", "captions", "questions", "answer_ids", "question_types",
                "action", "segments", "present_video", "present_skeleton", "present_text"]


@dataclass
class DatasetMeta:
    """What preprocessing needs to know about one split (from the manifest)."""

    root: str
    split: str
    height: int
    width: int
    joints: int
    tokenizer: str
    labelled: bool
    has_segments: bool
    question_types: list[str] = field(default_factory=list)
    #: the dataset's added modalities (stored in their own columns; manifest ``modalities``)
    extra_modalities: list[str] = field(default_factory=list)
    #: "raw" (uint8 frames, e.g. SynthAction) or "encoded" (whole container bytes; manifest splits.<s>.video_storage)
    video_storage: str = RAW
    video_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    video_std: tuple[float, ...] = (0.25, 0.25, 0.25)

    @classmethod
    def load(cls, root: str | Path, split: str) -> DatasetMeta:
        manifest = store.load_manifest(root)
        info = store.split_info(root, split, manifest)
        shapes, stats = manifest["shapes"], manifest.get("video_stats", {})
        return cls(
            root=str(root), split=split, height=shapes["height"], width=shapes["width"],
            joints=shapes["joints"], tokenizer=store.tokenizer_file(root, manifest),
            labelled=bool(info.get("labelled", True)), has_segments=bool(info.get("has_segments", False)),
            question_types=list(manifest["vocab"].get("question_types", [])),
            extra_modalities=store.extra_modalities(manifest), video_storage=info.get("video_storage", RAW),
            video_mean=tuple(stats.get("mean", (0.5,) * 3)), video_std=tuple(stats.get("std", (0.25,) * 3)),
        )


    @property
    def read_columns(self) -> list[str]:
        """The stored columns preprocessing reads: the built-ins', each added modality's, and an encoded split's
        ``attributes`` (frame count and rate)."""
        return read_columns(self.extra_modalities) + (["attributes"] if self.video_storage == ENCODED else [])


def read_columns(extra: list[str] = ()) -> list[str]:
    return [*READ_COLUMNS, *(c for name in extra for c in (name, f"present_{name}"))]


def batch_rng(ids: Any, seed: int, epoch: int = 0) -> np.random.Generator:
    """Per-batch generator seeded by content, so Ray's batch order does not change the draws."""
    digest = zlib.crc32("\x00".join(str(i) for i in ids).encode())
    return np.random.default_rng([seed, epoch, digest])


def preprocess_batch(rows: Any, cfg, meta: DatasetMeta, *, train: bool, rng: np.random.Generator,
                     with_masks: bool = True) -> dict[str, np.ndarray]:
    """Stored rows (dict of columns or a pandas DataFrame) → flat numpy batch (see module doc)."""
    rows = _columns(rows)
    size = len(rows["id"])
    augment = train and cfg.data.augment
    out: dict[str, np.ndarray] = {}
    enabled = cfg.enabled_modalities
    spans = None  # the part of each clip an encoded video's window covers: the skeleton is cut to the same time
    if "video" in enabled:
        out["video"], decoded, padded, spans = video_batch(rows, cfg, meta, train=train, rng=rng)
    if "skeleton" in enabled:
        out["skeleton"] = _skeletons(rows, cfg, meta, augment, rng, spans)
    if "text" in enabled:
        captions = [_pick(c, train, rng) for c in rows["captions"]]
        out["text_ids"], out["text_mask"] = _tokenize(captions, cfg, meta)
    for name in (n for n in enabled if n not in BUILTIN_MODALITIES):
        out.update(_added(name, rows, cfg, meta, augment, rng))
    for name in enabled:
        out[f"present_{name}"] = np.asarray(rows[f"present_{name}"], dtype=bool).reshape(size)
    if "text" in enabled:
        out["present_text"] &= out["text_mask"].any(axis=1)
    if "video" in enabled and meta.video_storage == ENCODED:
        out["skipped_video"] = (out["present_video"] & ~decoded).astype(np.int64)
        out["padded_video"] = padded.astype(np.int64)
        out["present_video"] &= decoded
    if meta.labelled:
        out.update(_labels(rows, cfg, meta, train, rng))
    if with_masks:
        # a row carrying none of the enabled modalities has no token to mask or predict: not trained on
        # (counted up front per run: rows_without_modalities, tag data.rows_without_modalities)
        carries = np.logical_or.reduce([out[f"present_{name}"] for name in enabled])
        if not carries.all():
            out = _keep_rows(out, carries)
        out.update(draw_masks(out, cfg, rng))
    return out


def _keep_rows(out: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The kept rows; counters of dropped rows (``skipped_video`` ...) move to the first kept row, so the
    worker still counts them."""
    counters = {key: int(out[key][~keep].sum()) for key in COUNTERS if key in out}
    out = {key: value[keep] for key, value in out.items()}
    for key, dropped in counters.items():
        if len(out[key]):
            out[key][0] += dropped
    return out


def rows_without_modalities(root: str | Path, split: str, modalities: list[str]) -> tuple[int, int]:
    """(rows of ``split`` that carry none of ``modalities``, all rows): the rows training skips."""
    import pyarrow.parquet as pq

    manifest = store.load_manifest(root)
    stored = [*BUILTIN_MODALITIES, *store.extra_modalities(manifest)]
    for name in (m for m in modalities if m not in stored):
        raise ValueError(f"modalities.{name} is enabled but {root}/manifest.json stores no such modality "
                         f"(added: {store.extra_modalities(manifest)}); ingest it with --modality {name}=DIR")
    presence = store.split_info(root, split, manifest).get("presence")
    if presence is not None:  # counted at ingest: no scan of the shards (thousands of files at scale)
        none = sum(n for carried, n in presence.items() if not set(carried.split("+")) & set(modalities))
        return none, sum(presence.values())
    columns = [f"present_{name}" for name in modalities]
    missing = total = 0
    for path in store.split_paths(root, split, manifest):
        table = pq.read_table(path, columns=columns).to_pydict()
        carries = np.logical_or.reduce([np.asarray(table[c], bool) for c in columns])
        missing, total = missing + int((~carries).sum()), total + len(carries)
    return missing, total


def _columns(rows: Any) -> dict[str, Any]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        return {c: rows[c].to_numpy() for c in rows.columns}
    return rows


def _pick(items: Any, train: bool, rng: np.random.Generator) -> str:
    items = [] if items is None else list(items)
    if not items:
        return ""
    return str(items[int(rng.integers(len(items)))] if train else items[0])


def _skeletons(rows: dict, cfg, meta: DatasetMeta, augment: bool, rng: np.random.Generator,
               spans: np.ndarray | None = None) -> np.ndarray:
    c = cfg.modalities["skeleton"]
    if c.joints != meta.joints:
        raise ValueError(f"modalities.skeleton.joints ({c.joints}) differs from the dataset's "
                         f"{meta.joints} joints ({meta.root}/manifest.json shapes.joints)")
    out = np.zeros((len(rows["id"]), c.frames, c.joints, 3), np.float32)
    present = []
    for i, raw in enumerate(rows["skeleton"]):
        if raw is None or len(raw) == 0:
            continue
        seq = np.frombuffer(raw, np.float32).reshape(-1, meta.joints, 3)
        if spans is not None:  # the video's window: the same stretch of time (ingest --frames sets the detail)
            start = min(int(spans[i, 0] * len(seq)), len(seq) - 1)
            seq = seq[start:max(start + 1, int(np.ceil(spans[i, 1] * len(seq))))]
        out[i] = seq[uniform_indices(len(seq), c.frames)]
        present.append(i)
    if augment and present:
        out[present] = _jitter_skeletons(out[present], rng)
    return out


def _added(name: str, rows: dict, cfg, meta: DatasetMeta, augment: bool,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An added modality's column through its ``decode`` / ``augment``: stacked batch arrays."""
    if name not in meta.extra_modalities:
        raise ValueError(f"modalities.{name} is enabled but {meta.root}/manifest.json stores no such modality "
                         f"(added: {meta.extra_modalities}); ingest it with --modality {name}=DIR")
    modality = modality_class(name)(cfg.modalities[name])
    empty = modality.empty()
    samples = []
    for row_id, raw in zip(rows["id"], rows[name], strict=True):
        if raw is None or len(raw) == 0:
            samples.append(empty)
            continue
        where = f"{meta.root} split {meta.split} row {row_id}: column {name!r}"
        try:
            arrays = modality.decode(bytes(raw))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        for key, want in empty.items():
            if np.shape(arrays.get(key)) != want.shape:
                raise ValueError(f"{where}: {type(modality).__name__}.decode gave {key!r} of shape "
                                 f"{np.shape(arrays.get(key))}, expected {want.shape} (from its config)")
        samples.append(modality.augment(arrays, rng) if augment else arrays)
    return {key: np.stack([np.asarray(s[key], dtype=empty[key].dtype) for s in samples]) for key in empty}


def _jitter_skeletons(seqs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(N, T, J, 3)`` skeletons, each rotated about the vertical axis (±0.3 rad), scaled (0.9-1.1) and given
    joint noise (std 0.01): one draw per clip, applied to the batch at once."""
    angle, scale = rng.uniform(-0.3, 0.3, len(seqs)), rng.uniform(0.9, 1.1, len(seqs))
    cos, sin, zero = np.cos(angle) * scale, np.sin(angle) * scale, np.zeros(len(seqs))
    turn = np.stack([np.stack([cos, zero, sin], 1), np.stack([zero, scale, zero], 1),
                     np.stack([-sin, zero, cos], 1)], 1)  # (N, 3, 3): rotation times scale
    return (np.einsum("ntjk,nlk->ntjl", seqs, turn) + rng.normal(0, 0.01, seqs.shape)).astype(np.float32)


def _tokenize(texts: list[str], cfg, meta: DatasetMeta) -> tuple[np.ndarray, np.ndarray]:
    tok = _tokenizer(meta.tokenizer, cfg)
    max_len = cfg.modalities["text"].max_len
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(bool)
    empty = np.array([not t.strip() for t in texts])
    ids[empty] = cfg.modalities["text"].pad_id  # no text: all padding, no [CLS]/[SEP] either
    mask[empty] = False
    return ids, mask


_CHECKED: set[tuple[str, int, int]] = set()


def _tokenizer(path: str, cfg):
    tok = load_tokenizer(path)
    key = (path, cfg.modalities["text"].vocab_size, cfg.modalities["text"].pad_id)
    if key not in _CHECKED:
        check_tokenizer(tok, cfg, path)
        _CHECKED.add(key)
    return tok


def _labels(rows: dict, cfg, meta: DatasetMeta, train: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = len(rows["id"])
    out = {"action": np.asarray(rows["action"], dtype=np.int64).reshape(size)}
    picks = [int(rng.integers(len(q))) if train and len(q) else 0 for q in map(_list, rows["questions"])]
    questions = [(_list(q)[k] if len(_list(q)) else "") for q, k in zip(rows["questions"], picks, strict=True)]
    answers = [(_list(a)[k] if len(_list(a)) > k else -1) for a, k in zip(rows["answer_ids"], picks, strict=True)]
    types = [(_list(t)[k] if len(_list(t)) > k else "") for t, k in zip(rows["question_types"], picks,
                                                                       strict=True)]
    out["question_ids"], out["question_mask"] = _tokenize(questions, cfg, meta)
    out["answer"] = np.asarray(answers, dtype=np.int64)
    vocab = {name: i for i, name in enumerate(meta.question_types)}
    out["question_type"] = np.asarray([vocab.get(t, -1) for t in types], dtype=np.int64)
    if meta.has_segments:
        seg = [(_list(s)[:2] if len(_list(s)) >= 2 else [-1.0, -1.0]) for s in rows["segments"]]
        out["segment"] = np.asarray(seg, dtype=np.float32).reshape(size, 2)
    return out


def _list(value: Any) -> list:
    return [] if value is None else list(value)


_SAMPLERS: dict[str, Any] = {}


def draw_masks(batch: dict[str, np.ndarray], cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``input_index`` / ``target_index`` from the model's budget sampler, drawn CPU-side.

    Drawing them here (V-JEPA-style, in the data path) keeps the training thread free;
    batches without these keys make the model draw them itself.
    """
    from ..model.budget import TokenBudgetSampler  # lazy: keeps torch out of light imports
    # keyed by content, not id(): Ray hands every task a freshly unpickled cfg
    key = repr((cfg.budget, cfg.modalities))
    sampler = _SAMPLERS.get(key)
    if sampler is None:
        if len(_SAMPLERS) > 8:
            _SAMPLERS.clear()
        sampler = _SAMPLERS[key] = TokenBudgetSampler(cfg)
    return sampler.sample_batch(batch, rng)


def nest_present(batch: dict[str, Any]) -> dict[str, Any]:
    """Flat ``present_<m>`` columns → ``batch["present"] = {m: (B,) bool}`` (in place, returned)."""
    present = {key[len("present_"):]: batch.pop(key) for key in [k for k in batch if k.startswith("present_")]}
    batch["present"] = present
    return batch
