"""Frozen features: extracted once per (split, view), cached for every probe.

Runbook::

    cache = FeatureCache(model, "data/synth", cfg)
    train = cache.get("train", "target:video")     # Features(pooled (N, D), tokens (N, T, D), valid, labels)
    test = cache.get("test", "fusion:video+skeleton")

A *view* (:mod:`oskar_ray.probes.views`) names the encoder and the modalities
it sees. Pooling matches :meth:`Oskar.encode`: mean over each
modality's valid tokens, then over the modalities a sample carries.

Rows are read straight from the Parquet shards and preprocessed with the
training code (:func:`preprocess_batch`, eval mode, no augmentation), which lets
VQA expand a clip into one row per question and localization into sliding windows.
With ``cache_dir`` set, features also persist on disk (``<split>[__<stored split>][__<rows hash>]__<mode>.pt``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from ..data import store
from ..data.encoded_video import ENCODED, eval_clips
from ..data.pipeline import selected_positions, shard_offsets
from ..data.preprocess import DatasetMeta, nest_present, preprocess_batch
from ..data.splits import SplitPlan, SplitSource
from ..model.oskar import pool_by_modality
from ..probes.views import parse_view, view_available

#: label columns carried into Features (present only on labelled splits)
LABEL_KEYS = ("action", "answer", "question_type")
#: tokens are kept in half precision: the attentive probe does not need more, memory halves
TOKEN_DTYPE = torch.float16

Expand = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class Features:
    pooled: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pooled)


def read_rows(dataset_dir: str | Path, split: str | SplitSource,
              columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a split as dicts, shard by shard, in stored order; ``split``: a stored split's name, or a
    :class:`SplitSource` (a stored split, maybe only some rows: ``EvalContext.cache.plan.source(name)``)."""
    source = split if isinstance(split, SplitSource) else SplitSource(split, None, "")
    paths = store.split_paths(dataset_dir, source.stored)
    columns = columns or DatasetMeta.load(dataset_dir, source.stored).read_columns
    offsets = shard_offsets(paths) if source.rows is not None else [0] * len(paths)
    for path, offset in zip(paths, offsets, strict=True):
        table = pq.read_table(path, columns=columns)
        keep = selected_positions(source.rows, offset, len(table))
        yield from (table.take(keep) if keep is not None else table).to_pylist()


def iterate_batches(dataset_dir: str | Path, split: str | SplitSource, cfg, batch_size: int,
                    expand: Expand | None = None,
                    columns: list[str] | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """Model batches (eval preprocessing) with the raw rows they came from; ``split``: a stored split's name,
    or a :class:`SplitSource` (a stored split, maybe only some rows)."""
    source = split if isinstance(split, SplitSource) else SplitSource(split, None, "")
    meta = DatasetMeta.load(dataset_dir, source.stored)
    pending: list[dict] = []
    for row in read_rows(dataset_dir, source, columns or meta.read_columns):
        pending += expand(row) if expand else [row]
        while len(pending) >= batch_size:
            yield _batch(pending[:batch_size], cfg, meta), pending[:batch_size]
            pending = pending[batch_size:]
    if pending:
        yield _batch(pending, cfg, meta), pending


def _batch(rows: list[dict], cfg, meta: DatasetMeta) -> dict:
    # "clip": the [start frame, view] an expanded row of an encoded video asks for (multi-clip eval, localization)
    keys = [*meta.read_columns, *(["clip"] if "clip" in rows[0] else [])]
    columns = {k: [r.get(k) for r in rows] for k in keys}
    flat = preprocess_batch(columns, cfg, meta, train=False, rng=np.random.default_rng(0), with_masks=False)
    return nest_present({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()})


def average_clips(feats: Features, clips: int) -> Features:
    """One row per video from ``clips`` consecutive rows each (multi-clip eval): pooled features and tokens
    averaged, a token valid where any clip has it, labels of the first."""
    if clips == 1:
        return feats
    n = len(feats) // clips
    tokens = feats.tokens.float().view(n, clips, *feats.tokens.shape[1:]).mean(1).to(feats.tokens.dtype)
    return Features(feats.pooled.view(n, clips, -1).mean(1), tokens,
                    feats.valid.view(n, clips, -1).any(1), {k: v[::clips] for k, v in feats.labels.items()})


def per_question(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (clip, question): eval preprocessing reads the first question only."""
    questions = row.get("questions") or []
    return [{**row, "questions": [q], "answer_ids": [row["answer_ids"][k]],
             "question_types": [row["question_types"][k]]} for k, q in enumerate(questions)]


def encode_view(model, batch: dict, view: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled (B, D), tokens (B, N, D), valid (B, N)) of one view of a batch."""
    encoder, names = parse_view(view)
    if "question" in names:
        batch = {**batch, "text_ids": batch["question_ids"], "text_mask": batch["question_mask"],
                 "present": {**batch["present"], "text": batch["question_mask"].any(1)}}
        names = ["text" if n == "question" else n for n in names]
    tokens, valid = model.encode_tokens(batch, names, encoder=encoder)
    sizes = [model.modalities[n].num_tokens for n in model._requested(batch, names)]
    return pool_by_modality(tokens, valid, sizes), tokens, valid


@torch.no_grad()
def extract(model, batches: Iterator[tuple[dict, list[dict]]], views: list[str], desc: str = "features",
            progress: bool = True) -> dict[str, Features]:
    """Run every view over the batches once; concatenated features per view."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {v: [] for v in views}
    labels: dict[str, list] = {k: [] for k in LABEL_KEYS}
    skipped = 0
    for batch, _ in tqdm(batches, desc=desc, disable=not progress, leave=False):
        skipped += int(batch.pop("skipped_video").sum()) if "skipped_video" in batch else 0
        batch.pop("padded_video", None)
        batch = to_device(batch, device)
        for view in views:
            pooled, tokens, valid = encode_view(model, batch, view)
            parts[view].append((pooled.float().cpu(), tokens.to(TOKEN_DTYPE).cpu(), valid.cpu()))
        for key in LABEL_KEYS:
            if key in batch:
                labels[key].append(batch[key].cpu())
    if not any(parts.values()):
        raise ValueError(f"{desc}: the split has no rows")
    merged = {k: torch.cat(v) for k, v in labels.items() if v}
    if skipped:  # their video features are zeros: said here and tagged on the eval run (eval.skipped_video)
        print(f"{desc}: {skipped} video(s) could not be decoded (zero video features)", flush=True)
    return {view: Features(*(torch.cat(p) for p in zip(*chunks, strict=True)), labels=merged,
                           extra={"skipped_video": [skipped]}) for view, chunks in parts.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    from ..model.oskar import move_batch

    return batch if device.type == "cpu" else move_batch(batch, device)


class FeatureCache:
    """Features per (split, view), extracted lazily: all clip views of a split in one pass."""

    def __init__(self, model, dataset_dir: str | Path, cfg, views: list[str], batch_size: int = 64,
                 cache_dir: str | Path | None = None, progress: bool = True, plan: SplitPlan | None = None):
        self.model, self.root, self.cfg = model, str(dataset_dir), cfg
        #: logical split -> stored rows (a dataset without val gets one carved from train)
        self.plan = plan or SplitPlan.from_config(self.root, cfg)
        self.views = [v for v in views if view_available(model, v)]
        self.batch_size, self.progress = batch_size, progress
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._store: dict[tuple[str, str, str], Features] = {}
        self._clips: dict[str, int] = {}
        #: logical split -> videos that did not decode (their video features are zeros)
        self.skipped_video: dict[str, int] = {}

    def has_split(self, split: str) -> bool:
        return self.plan.has(split)

    def get(self, split: str, view: str) -> Features:
        """Features of ``view`` on ``split``; views with ``question`` have one row per question."""
        if view not in self.views:
            raise ValueError(f"view {view!r} is not available for this model (available: {self.views})")
        mode = "qa" if "question" in view else "clip"
        key = (split, view, mode)
        if key not in self._store:
            self._load(split, mode)
        return self._store[key]

    def _load(self, split: str, mode: str) -> None:
        views = [v for v in self.views if (mode == "qa") == ("question" in v)]
        disk = self._disk_path(split, mode)
        loaded = torch.load(disk, weights_only=False) if disk is not None and disk.is_file() else {}
        # a cache written for fewer views (another view list, an older version) is extended, not trusted
        if not set(views) <= set(loaded):
            clips = self._clips_per_row(split) if mode == "clip" else 1
            expand = per_question if mode == "qa" else (self._per_clip if clips > 1 else None)
            batches = iterate_batches(self.root, self.plan.source(split), self.cfg, self.batch_size, expand=expand)
            found = extract(self.model, batches, views, desc=f"features {split}", progress=self.progress)
            loaded |= {view: average_clips(feats, clips) for view, feats in found.items()}
            self.skipped_video[split] = next(iter(found.values())).extra.get("skipped_video", [0])[0] if found else 0
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                torch.save(loaded, disk)
        for view, feats in loaded.items():
            self._store[(split, view, mode)] = feats

    def _clips_per_row(self, split: str) -> int:
        return self.clip_expansion(self.plan.source(split).stored)[0]

    def clip_expansion(self, stored_split: str) -> tuple[int, Expand | None]:
        """(clips read per video, the row expansion that reads them): ``eval.video_segments`` x
        ``eval.video_views`` for an encoded split, else (1, None). Whoever scores a model outside the cache
        (fine-tuning) reads the same clips and averages over them as the cached features do."""
        if stored_split not in self._clips:  # fine-tuning asks at every score of its carve: read the manifest once
            meta = DatasetMeta.load(self.root, stored_split)
            self._clips[stored_split] = (self.cfg.eval.video_segments * self.cfg.eval.video_views
                                         if meta.video_storage == ENCODED else 1)
        clips = self._clips[stored_split]
        return clips, (self._per_clip if clips > 1 else None)

    def _per_clip(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**row, "clip": clip} for clip in eval_clips(row["attributes"], self.cfg)]

    def _disk_path(self, split: str, mode: str) -> Path | None:
        if not self.cache_dir:
            return None
        source = self.plan.source(split)
        # named by what is read: another stored split (eval.test_split ...) or another carve is another file
        tag = "" if source.stored == split else f"__{source.stored}"
        if source.rows is not None:
            tag += "__" + hashlib.sha1(source.rows.tobytes()).hexdigest()[:10]
        if self._clips_per_row(split) > 1 or DatasetMeta.load(self.root, source.stored).video_storage == ENCODED:
            e, d = self.cfg.eval, self.cfg.data  # what an encoded video's clips depend on
            clip_key = (e.video_segments, e.video_views, d.frame_step, d.video_norm)
            tag += "__clips" + hashlib.sha1(repr(clip_key).encode()).hexdigest()[:8]
        return self.cache_dir / f"{split}{tag}__{mode}.pt"
