"""Streaming the dataset into training: Ray Data, or plain Python for one process.

Ray (a cluster, Ray Train, or a laptop)::

    ds = build_dataset(cfg, "pretrain")                # shards → map_batches(read + preprocess)
    trainer = TorchTrainer(..., datasets={"train": ds})
    # inside the worker loop:
    for batch in iter_train_batches(ray.train.get_dataset_shard("train"), cfg):
        loss = model(batch)["loss"]

Without Ray (unit tests, single-process training, evaluation)::

    for batch in iterate_local("data/synth", "val", cfg, batch_size=64):
        ...

Both yield the batch of docs/design.md ("Contracts"): ``video`` (B, T, 3, H, W) float32, ``skeleton``
(B, T, J, 3) float32, ``text_ids`` int64 / ``text_mask`` bool (B, L),
``present`` {modality: (B,) bool}, labels on labelled splits (``action``,
``answer``, ``question_ids``/``question_mask``, ``question_type``, ``segment``
on untrimmed splits) and the token-budget indices ``input_index`` /
``target_index`` drawn CPU-side.

Memory stays bounded: Ray Data's streaming executor runs a few read-and-preprocess
tasks at a time, each holding one batch (64 raw clips, or 8 clips decoded from encoded
video), ``map_batches`` runs in fractional-CPU tasks
(``data.cpus_per_task``; 2-core laptops need fractions, see RAY_NOTES.md) and
backpressure keeps the object store below its configured size, so a dataset
far larger than the object store streams through (tested in
tests/test_data_pipeline.py). ``iterate_local`` reads one row group at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from .. import storage
from ..modalities import adopt_modalities, carried_modalities
from . import store
from .encoded_video import ENCODED
from .preprocess import DatasetMeta, batch_rng, nest_present, preprocess_batch

#: rows per map_batches call; independent of the training batch size (re-batched downstream)
MAP_BATCH_SIZE = 64
#: for encoded video: each row is a decode (~0.1 s at 224^2) and its clip 9.6 MB of float32, so a task yields a
#: few rows at a time: blocks of ~77 MB under a run's block size (bench_decode.py, Ray Data / tight PyAV loop,
#: with read_parquet and 4 / 8 / 16-row tasks: 0.74, 0.81-0.86, 1.10 with 154 MB blocks; now a task per 16-video
#: shard yielding 8 clips at a time: 0.83, 77 MB blocks)
ENCODED_MAP_BATCH_SIZE = 8


def _ray_preprocess(batch: dict[str, np.ndarray], cfg, meta: DatasetMeta, train: bool, seed: int,
                    with_masks: bool, modalities: dict) -> dict[str, np.ndarray]:
    adopt_modalities(modalities)  # an added modality registered in the driver only
    rng = batch_rng(batch["id"], seed)
    return preprocess_batch(batch, cfg, meta, train=train, rng=rng, with_masks=with_masks)


def build_dataset(cfg, split: str, *, root: str | Path | None = None, train: bool | None = None,
                  seed: int | list[int] | None = None, with_masks: bool = True, concurrency: int | None = None):
    """A lazy ``ray.data.Dataset`` of preprocessed flat batches for one split.

    ``train`` defaults to ``split == cfg.data.train_split`` (augmentation, random caption/question,
    shuffled shard order; rows are mixed further by the loader's local shuffle buffer).
    ``seed``: a list streams one epoch per seed, one after the other (a run's epochs); the manifest, shard list
    and read units are read once for all of them.
    ``concurrency`` caps parallel read and preprocessing tasks (None: :func:`data_tasks`).
    """
    # a URI must stay a string: Path('s3://b/x') collapses to 's3:/b/x'
    root = str(root or cfg.data.path)
    if not root:
        raise ValueError("data.path is empty: point it at a dataset directory (oskar data synth --out DIR)")
    meta = DatasetMeta.load(root, split)
    train = split == cfg.data.train_split if train is None else train
    seeds = seed if isinstance(seed, list) else [cfg.train.seed if seed is None else seed]
    tasks = concurrency or data_tasks(cfg)
    paths = store.split_paths(root, split)
    fn_kwargs = {"cfg": cfg, "meta": meta, "train": train, "with_masks": with_masks,
                 "modalities": carried_modalities(cfg.enabled_modalities)}
    encoded = meta.video_storage == ENCODED
    return _stream(f"{root}: split {split!r}", paths, seeds, tasks, fn_kwargs,
                   rows=ENCODED_MAP_BATCH_SIZE if encoded else MAP_BATCH_SIZE,
                   cpus=cfg.data.decode_cpus_per_task if encoded else cfg.data.cpus_per_task)


def _stream(where: str, paths: list[str], seeds: list[int], tasks: int | None, fn_kwargs: dict, *, rows: int,
            cpus: float):
    """The epochs one after the other as one dataset: the split's read units (a shard, or a row group of a small
    split; listed once) in each epoch's order, each with its epoch's seed, and one task per item of
    :func:`stream_items` that reads its units in ``rows``-row batches and preprocesses them as it goes — raw
    clips 64 at a time, encoded videos 8 (each a decode, so decoding spreads over the tasks).

    One operator over every epoch's units, so the tasks take them in order: a union of one dataset per epoch
    ran every epoch's tasks at once (a 200-clip raw split streamed for 20 epochs: 13.1 s to the first batch and
    7.0 s for the next 19 batches; one operator: 4.7 s and 2.3 s, as for one epoch). Ray Data's Parquet reader would
    first run a file-listing task and a footer-reading actor, per epoch: processes to start before the first
    row moves (~3.5 s of every run's first batch on 2 cores, experiments/bench_train.py --overhead; 24 encoded
    videos streamed for 20 epochs: 41 s). Rows are mixed further by the local shuffle buffer."""
    import ray.data

    units = read_units(paths, tasks)
    if not units:
        raise ValueError(f"{where} lists no shards in its manifest: nothing to stream")
    items = stream_items(len(units), seeds)
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_and_preprocess, batch_size=1, num_cpus=cpus, compute=ray.data.TaskPoolStrategy(size=tasks),
        fn_kwargs={**fn_kwargs, "rows": rows, "units": units})


#: the items (one Ray Data block each, put by the driver, ~1 ms apiece) a stream is cut into, at most (or one per
#: epoch, if more): a Kinetics-sized split (~15k shards) streamed for 64 epochs would otherwise be ~1M one-unit
#: blocks before the first row moves (measured: 20k of them took the driver 21 s; that run's 1024 items 0.8 s)
MAX_STREAM_ITEMS = 1024


def stream_items(unit_count: int, seeds: list[int]) -> list[dict[str, int]]:
    """What the stream's tasks are handed: ``{"seed", "first", "count"}``, positions ``first`` ..
    ``first + count`` of epoch ``seed``'s order of the split's ``unit_count`` read units (:func:`epoch_order`).
    One unit per item while the run's units number at most :data:`MAX_STREAM_ITEMS`, else runs of consecutive
    units, each epoch cut into its share of the items (an item never spans two epochs), so a stream is at most
    ``max(MAX_STREAM_ITEMS, len(seeds))`` items."""
    per_epoch = max(1, MAX_STREAM_ITEMS // len(seeds))
    per_item = -(-unit_count // per_epoch)
    return [{"seed": seed, "first": first, "count": min(per_item, unit_count - first)}
            for seed in seeds for first in range(0, unit_count, per_item)]


def epoch_order(unit_count: int, seed: int, train: bool) -> np.ndarray:
    """The order an epoch reads the split's read units in: shuffled by its seed when training, stored otherwise."""
    return np.random.default_rng(seed).permutation(unit_count) if train else np.arange(unit_count)


#: below this many shards per data task, a split is handed out by row group, so a small split (one shard of
#: 512 clips) still spreads over the tasks; above, by shard (no footer reads in the driver)
SHARDS_PER_TASK = 2


def read_units(paths: list[str], tasks: int | None) -> list[dict[str, Any]]:
    """What one preprocessing task reads: ``{"path", "row_group"}``, a whole shard (``row_group`` -1) when the
    split has shards enough for its tasks, else each row group of each shard (the driver reads the footers)."""
    if len(paths) >= SHARDS_PER_TASK * (tasks or os.cpu_count() or 1):
        return [{"path": path, "row_group": -1} for path in paths]
    units = []
    for path in paths:
        with _open_shard(path) as shard:
            units += [{"path": path, "row_group": group} for group in range(shard.num_row_groups)]
    return units


def _open_shard(path: str, **options) -> pq.ParquetFile:
    """A shard as a ``ParquetFile`` through pyarrow filesystems: a local path or an object-store URI."""
    filesystem, inner = storage.filesystem_and_path(path)
    return pq.ParquetFile(inner, filesystem=filesystem, **options)


def _read_and_preprocess(items: dict[str, np.ndarray], rows: int, units: list[dict[str, Any]],
                         **preprocess) -> Iterator[dict[str, np.ndarray]]:
    """The rows of the read units the given :func:`stream_items` name (``units``: the split's :func:`read_units`,
    the same for every task) as preprocessed batches of ``rows`` rows, each unit with its epoch's seed (a
    generator: Ray Data streams each batch on while the next is read and made; a task holds one batch at a
    time)."""
    meta = preprocess["meta"]
    for seed, first, count in zip(items["seed"], items["first"], items["count"], strict=True):
        for k in epoch_order(len(units), int(seed), preprocess["train"])[int(first):int(first) + int(count)]:
            path, group = units[k]["path"], units[k]["row_group"]
            # pre-buffered: fewer, larger reads on object storage
            with _open_shard(path, pre_buffer=True) as shard:
                for part in shard.iter_batches(batch_size=rows, row_groups=None if group < 0 else [group],
                                               columns=meta.read_columns):
                    yield _ray_preprocess({name: part.column(name).to_numpy(zero_copy_only=False)
                                           for name in part.schema.names}, seed=int(seed), **preprocess)


#: training batches a run's stream may hold in flight by default (data.max_memory_mb = 0)
STREAM_BATCHES = 8
#: ... and at least this many of Ray Data's blocks per data task in flight (and never fewer than 4 blocks)
STREAM_BLOCKS_PER_TASK = 2
#: Ray Data's largest block holds at least this many preprocessed samples (and at least ray_runtime.DATA_BLOCK_MB)
BLOCK_SAMPLES = 8


def sample_mb(cfg) -> float:
    """MB of one preprocessed sample of the enabled modalities, with its token-budget indices."""
    from ..modalities import modality_class

    size = sum(array.nbytes for name in cfg.enabled_modalities
               for array in modality_class(name)(cfg.modalities[name]).empty().values())
    return (size + 8 * (cfg.budget.input_tokens + cfg.budget.target_tokens)) / 2**20


def stream_block_mb(cfg, floor_mb: float) -> float:
    """Ray Data's largest block for a run: ``floor_mb`` (16 MB: ~80 tiny clips, so the first batch does not wait
    for Ray's 128 MB, ~650 clips), or :data:`BLOCK_SAMPLES` samples where those are larger (224^2 clips: 77 MB,
    what ``experiments/bench_decode.py`` measured best)."""
    return max(floor_mb, BLOCK_SAMPLES * sample_mb(cfg))


def stream_memory_mb(cfg, block_mb: float) -> float:
    """``data.max_memory_mb``, else the default window of a run's stream: each worker's local shuffle buffer
    (``data.shuffle_buffer`` samples) plus :data:`STREAM_BATCHES` training batches of preprocessed samples, at
    least :data:`STREAM_BLOCKS_PER_TASK` blocks per data task in flight.
    Left unbounded, Ray Data fills a quarter of the object store as fast as it can — on 2 cores, CPU taken from
    the trainer for samples needed minutes later (tiny recipe, 40 steps through Ray Train: the steps took
    23.7 s against 14.5 s with this window, 10.7 s in one process; ``experiments/bench_train.py --overhead``).
    Sized with the shuffle buffers, so the stream runs ahead of the loaders by about what they hold back: 8
    batches of 32 alone (about a 256-sample buffer's worth) let a small split's short tasks keep the trainer
    waiting at times, 9-18 % of some 10-step windows; with the buffer's worth added, 0-1 %, as with a 32-sample
    buffer in the old window (docs/results.md, "Twelfth pass")."""
    if cfg.data.max_memory_mb:
        return cfg.data.max_memory_mb
    blocks = max(4, STREAM_BLOCKS_PER_TASK * (data_tasks(cfg) or 2))
    samples = STREAM_BATCHES * cfg.train.batch_size + cfg.train.num_workers * cfg.data.shuffle_buffer
    return max(samples * sample_mb(cfg), blocks * block_mb)


def data_tasks(cfg) -> int | None:
    """Tasks in flight per data operator (reads, preprocessing): ``data.max_tasks``, else one per core of this
    machine on a single-node Ray (None, Ray decides, on a multi-node cluster: its nodes differ). Ray Data
    otherwise starts one worker process per fractional CPU at once, and each imports torch (~2 s): on a 2-core
    laptop 16 processes starting together held the first batch back 30-40 s; warm processes are reused for the
    whole stream. (Not ``$RAY_ADDRESS``: every worker of a local sweep cluster has it set.)"""
    import ray

    if cfg.data.max_tasks:
        return cfg.data.max_tasks
    single_node = not ray.is_initialized() or sum(1 for node in ray.nodes() if node.get("Alive")) <= 1
    return (os.cpu_count() or 1) if single_node else None


def task_cpus(cfg, split: str | None = None) -> float:
    """CPUs one preprocessing task of ``split`` (default: the training split) reserves: a decode task of an
    encoded split takes ``data.decode_cpus_per_task``, any other ``data.cpus_per_task``."""
    if not cfg.data.path:
        return cfg.data.cpus_per_task  # the built-in benchmark: raw frames
    encoded = DatasetMeta.load(cfg.data.path, split or cfg.data.train_split).video_storage == ENCODED
    return cfg.data.decode_cpus_per_task if encoded else cfg.data.cpus_per_task


def iter_train_batches(dataset, cfg, batch_size: int | None = None, *, train: bool = True,
                       device: str | torch.device | None = None) -> Iterator[dict[str, Any]]:
    """Model batches from a Dataset or a Ray Train shard (``ray.train.get_dataset_shard``)."""
    batches = dataset.iter_torch_batches(
        batch_size=batch_size or cfg.train.batch_size,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer if train else None,
        local_shuffle_seed=cfg.train.seed if train else None,
        prefetch_batches=cfg.data.prefetch_batches, drop_last=train, device=device or "auto",
    )
    for batch in batches:
        yield nest_present(dict(batch))


def iterate_local(dataset_dir: str | Path, split: str, cfg, batch_size: int, seed: int = 0, *,
                  train: bool = False, epochs: int = 1, drop_last: bool = False,
                  with_masks: bool = True, rows: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """The same batches without Ray: row group by row group, shuffled within a shard when training.

    ``rows``: only these row positions of the split (stored order), e.g. a carved split
    (:class:`oskar_ray.data.splits.SplitPlan`); None reads every row."""
    meta = DatasetMeta.load(dataset_dir, split)
    paths = store.split_paths(dataset_dir, split)
    offsets = shard_offsets(paths) if rows is not None else [0] * len(paths)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(paths)) if train else range(len(paths))
        pending: dict[str, list] = {}
        for k in order:
            table = pq.read_table(paths[k], columns=meta.read_columns)
            keep = selected_positions(rows, offsets[k], len(table))
            table = table.take(keep) if keep is not None else table
            idx = np.random.default_rng([seed, epoch, int(k)]).permutation(len(table)) if train else None
            rows_of_shard = table.take(idx) if idx is not None else table
            pending = _concat(pending, rows_of_shard.to_pydict())
            while len(pending.get("id", [])) >= batch_size:
                head, pending = _split(pending, batch_size)
                yield _to_model_batch(head, cfg, meta, train, seed, epoch, with_masks)
        if pending.get("id") and not drop_last:
            yield _to_model_batch(pending, cfg, meta, train, seed, epoch, with_masks)


def shard_offsets(paths: list[str]) -> list[int]:
    """The stored-order position of each shard's first row."""
    counts = [pq.read_metadata(path).num_rows for path in paths]
    return [int(x) for x in np.cumsum([0, *counts[:-1]])]


def selected_positions(rows: np.ndarray | None, offset: int, n: int) -> np.ndarray | None:
    """Positions within one shard (``offset`` .. ``offset + n``) of the selected split rows; None: all."""
    if rows is None:
        return None
    return (rows[(rows >= offset) & (rows < offset + n)] - offset).astype(np.int64)


def _concat(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    return {k: a.get(k, []) + v for k, v in b.items()}


def _split(rows: dict[str, list], n: int) -> tuple[dict[str, list], dict[str, list]]:
    return {k: v[:n] for k, v in rows.items()}, {k: v[n:] for k, v in rows.items()}


def _to_model_batch(rows: dict[str, list], cfg, meta: DatasetMeta, train: bool, seed: int, epoch: int,
                    with_masks: bool) -> dict[str, Any]:
    rng = batch_rng(rows["id"], seed, epoch)
    flat = preprocess_batch(rows, cfg, meta, train=train, rng=rng, with_masks=with_masks)
    return nest_present({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()})
