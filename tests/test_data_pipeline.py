"""Pipeline: batch keys/dtypes/shapes, normalisation, presence, tokenizer checks, Ray Data and streaming."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.data import store
from oskar_ray.data.pipeline import build_dataset, iter_train_batches, iterate_local, read_units
from oskar_ray.data.preprocess import DatasetMeta, batch_rng, preprocess_batch
from oskar_ray.data.tokenizer import load_tokenizer, train_tokenizer

REPO_CFG = "experiments/configs/smoke.yaml"


def _check_batch(batch: dict, cfg, size: int, labelled: bool, segments: bool = False) -> None:
    v, s, t = (cfg.modalities[m] for m in ("video", "skeleton", "text"))
    expect = {
        "video": ((size, v.frames, 3, v.height, v.width), torch.float32),
        "skeleton": ((size, s.frames, s.joints, 3), torch.float32),
        "text_ids": ((size, t.max_len), torch.int64), "text_mask": ((size, t.max_len), torch.bool),
        "input_index": ((size, cfg.budget.input_tokens), torch.int64),
        "target_index": ((size, cfg.budget.target_tokens), torch.int64),
    }
    if labelled:
        expect.update(action=((size,), torch.int64), answer=((size,), torch.int64),
                      question_ids=((size, t.max_len), torch.int64),
                      question_mask=((size, t.max_len), torch.bool), question_type=((size,), torch.int64))
    if segments:
        expect["segment"] = ((size, 2), torch.float32)
    assert set(batch) == set(expect) | {"present"}
    for key, (shape, dtype) in expect.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert set(batch["present"]) == {"video", "skeleton", "text"}
    assert all(p.dtype == torch.bool and p.shape == (size,) for p in batch["present"].values())


def test_local_batches_match_the_contract(synth_dir, smoke_cfg):
    batches = list(iterate_local(synth_dir, "train", smoke_cfg, batch_size=8))
    assert sum(len(b["video"]) for b in batches) == store.split_info(synth_dir, "train")["samples"]
    _check_batch(batches[0], smoke_cfg, 8, labelled=True)
    pre = next(iterate_local(synth_dir, "pretrain", smoke_cfg, batch_size=4, train=True))
    _check_batch(pre, smoke_cfg, 4, labelled=False)  # labels hidden from pretraining
    unt = next(iterate_local(synth_dir, "untrimmed", smoke_cfg, batch_size=2))
    _check_batch(unt, smoke_cfg, 2, labelled=True, segments=True)
    assert ((unt["segment"] >= 0) & (unt["segment"] <= 1)).all()
    b = batches[0]
    # per-clip normalisation: every clip and channel has mean 0, std 1 (colour removed)
    assert b["video"].mean(dim=(1, 3, 4)).abs().max() < 1e-3
    assert (b["video"].std(dim=(1, 3, 4)) - 1).abs().max() < 1e-2
    assert (b["text_ids"][~b["text_mask"]] == 0).all() and b["text_mask"].any(dim=1).all()
    assert (b["answer"] >= 0).all() and (b["action"] >= 0).all()


def test_deterministic_and_dataset_norm(synth_dir, smoke_cfg):
    a = next(iterate_local(synth_dir, "pretrain", smoke_cfg, batch_size=8, seed=1, train=True))
    b = next(iterate_local(synth_dir, "pretrain", smoke_cfg, batch_size=8, seed=1, train=True))
    assert all(torch.equal(a[k], b[k]) for k in a if k != "present")
    cfg = load_config(REPO_CFG, ["data.video_norm=dataset"])
    c = next(iterate_local(synth_dir, "val", cfg, batch_size=8))
    assert c["video"].mean(dim=(1, 3, 4)).abs().max() > 0.05  # colour kept


def test_absent_modalities_are_marked(synth_dir, smoke_cfg):
    meta = DatasetMeta.load(synth_dir, "val")
    rows = pq.read_table(store.split_paths(synth_dir, "val")).slice(0, 4).to_pydict()
    rows["video"][1] = b""
    rows["present_video"][1] = False
    rows["captions"][2] = []
    rows["skeleton"][3] = b""
    rows["present_skeleton"][3] = False
    out = preprocess_batch(rows, smoke_cfg, meta, train=True, rng=batch_rng(rows["id"], 0))
    assert out["present_video"].tolist() == [True, False, True, True]
    assert out["present_text"].tolist() == [True, True, False, True]
    assert out["present_skeleton"].tolist() == [True, True, True, False]
    assert (out["video"][1] == 0).all() and (out["skeleton"][3] == 0).all() and not out["text_mask"][2].any()
    assert out["input_index"].shape == (4, smoke_cfg.budget.input_tokens)


def test_tokenizer_must_fit_the_text_config(synth_dir, tmp_path):
    meta = DatasetMeta.load(synth_dir, "val")
    rows = pq.read_table(store.split_paths(synth_dir, "val")).slice(0, 2).to_pydict()
    small = load_config(REPO_CFG, ["modalities.text.vocab_size=50"])
    with pytest.raises(ValueError, match="modalities.text.vocab_size"):
        preprocess_batch(rows, small, meta, train=False, rng=np.random.default_rng(0))
    pad = load_config(REPO_CFG, ["modalities.text.pad_id=3"])
    with pytest.raises(ValueError, match="modalities.text.pad_id"):
        preprocess_batch(rows, pad, meta, train=False, rng=np.random.default_rng(0))


def test_tokenizer_training_is_deterministic(tmp_path):
    """Same texts, same ids: re-synthesising a dataset must not change what the model sees."""
    colours, parts = ["red", "blue", "green", "white", "black"], ["left arm", "right hand", "both arms", "head"]
    texts = [f"someone wearing {c} waves the {p} {n} times, then claps!" for c in colours for p in parts
             for n in ("two", "three", "several")] + ["what does the person in red do?", "how many times?"]
    files = [train_tokenizer(texts, tmp_path / f"t{i}.json", 300).read_bytes() for i in range(6)]
    assert all(f == files[0] for f in files)
    tok = load_tokenizer(tmp_path / "t0.json")
    assert tok.pad_token_id == 0 and tok.cls_token_id == 2 and tok.sep_token_id == 3
    ids = tok("Someone waves the LEFT arm")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert tok.decode(ids, skip_special_tokens=True) == "someone waves the left arm"


@pytest.mark.slow
def test_ray_pipeline_matches_local(ray_local, synth_dir):
    cfg = load_config(REPO_CFG, [f"data.path={synth_dir}"])
    ds = build_dataset(cfg, "val")
    batches = sorted(iter_train_batches(ds, cfg, batch_size=8, train=False), key=lambda b: -len(b["video"]))
    _check_batch(batches[0], cfg, 8, labelled=True)  # Ray does not preserve order: the short one may come first
    assert sum(len(b["video"]) for b in batches) == store.split_info(synth_dir, "val")["samples"]
    train = list(iter_train_batches(build_dataset(cfg, "pretrain"), cfg, batch_size=16))
    assert all(len(b["video"]) == 16 for b in train)  # drop_last while training
    _check_batch(train[0], cfg, 16, labelled=False)


def test_read_tasks_cover_every_row_once_by_shard_or_by_row_group_and_read_uris(synth_dir, monkeypatch):
    """What Ray Data's read-and-preprocess tasks do, called without Ray: a split with few shards per task is
    handed out by row group (a small split still spreads over the tasks), a large one by shard; either way
    every row arrives once, preprocessed, in batches of at most 64; a ``file://`` URI reads like its path."""
    from oskar_ray.data import pipeline
    from oskar_ray.data.pipeline import MAP_BATCH_SIZE, _read_and_preprocess

    cfg = load_config(REPO_CFG, [f"data.path={synth_dir}"])
    meta = DatasetMeta.load(synth_dir, "pretrain")
    paths = store.split_paths(synth_dir, "pretrain")
    by_group = read_units(paths, tasks=8)
    monkeypatch.setattr(pipeline, "SHARDS_PER_TASK", 0)  # as if the split had shards enough for its tasks
    by_shard = read_units(paths, tasks=8)
    assert len(by_group) == sum(pq.ParquetFile(p).num_row_groups for p in paths) > len(paths)
    assert [u["row_group"] for u in by_shard] == [-1] * len(paths)
    uris = [{**u, "path": "file://" + u["path"]} for u in by_group]
    kwargs = {"cfg": cfg, "meta": meta, "train": True, "with_masks": True, "modalities": {}, "rows": MAP_BATCH_SIZE}
    seen = []
    for units in (by_group, by_shard, uris):
        items = {"seed": np.array([0, 0]), "first": np.array([0, 1]), "count": np.array([1, len(units) - 1])}
        batches = list(_read_and_preprocess(items, units=units, **kwargs))
        assert all(0 < len(b["video"]) <= MAP_BATCH_SIZE for b in batches) and batches[0]["video"].dtype == np.float32
        assert sum(len(b["video"]) for b in batches) == store.split_info(synth_dir, "pretrain")["samples"]
        # each row's preprocessing is keyed by its id and the seed: the same rows, however the split is cut
        seen.append(sorted(round(float(v.sum()), 3) for b in batches for v in b["video"]))
    assert seen[0] == seen[1] == seen[2]


def test_the_read_tasks_follow_each_epochs_order_of_the_units(synth_dir, monkeypatch):
    """The stream's tasks read the units of their items in the order of the item's epoch: shuffled by its seed
    when training, stored order otherwise (a stream cut into runs of several units reads them the same way)."""
    from oskar_ray.data import pipeline
    from oskar_ray.data.pipeline import _read_and_preprocess, epoch_order

    monkeypatch.setattr(pipeline, "_ray_preprocess", lambda batch, **_: batch["id"].tolist())
    meta = DatasetMeta.load(synth_dir, "pretrain")
    units = read_units(store.split_paths(synth_dir, "pretrain"), tasks=8)  # by row group: several units
    ids = [pq.ParquetFile(u["path"]).read_row_group(u["row_group"], columns=["id"]).column("id").to_pylist()
           for u in units]
    half = len(units) // 2
    assert half >= 1
    other = next(seed for seed in range(4, 100)  # an epoch whose order differs from seed 3's
                 if epoch_order(len(units), seed, True).tolist() != epoch_order(len(units), 3, True).tolist())
    seen = {}
    for seed, train in ((3, True), (other, True), (3, False)):
        items = {"seed": np.array([seed, seed]), "first": np.array([0, half]),
                 "count": np.array([half, len(units) - half])}
        read = [i for batch in _read_and_preprocess(items, units=units, rows=64, meta=meta, train=train)
                for i in batch]
        assert read == [i for k in epoch_order(len(units), seed, train) for i in ids[k]]
        seen[seed, train] = read
    assert seen[3, True] != seen[other, True] and seen[3, False] == [i for unit in ids for i in unit]


def test_a_long_stream_is_cut_into_a_bounded_number_of_items_each_unit_once_per_epoch_in_its_order(monkeypatch):
    """The driver puts one Ray Data block per stream item: a Kinetics-sized split streamed for dozens of epochs
    must not become a million blocks. Past :data:`MAX_STREAM_ITEMS` an item is a run of consecutive units of
    one epoch's order; either way each epoch reads every unit once, in its own seed's order."""
    from oskar_ray.data import pipeline
    from oskar_ray.data.pipeline import epoch_order, stream_items

    def read(items: list[dict], units: int) -> list[list[int]]:
        epochs: dict[int, list[int]] = {}
        for item in items:
            order = epoch_order(units, item["seed"], train=True)
            epochs.setdefault(item["seed"], []).extend(order[item["first"]:item["first"] + item["count"]].tolist())
        return list(epochs.values())

    small = stream_items(5, [7, 8])
    assert [item["count"] for item in small] == [1] * 10  # a small run: one unit per item, as many items as units
    monkeypatch.setattr(pipeline, "MAX_STREAM_ITEMS", 64)
    assert {item["count"] for item in stream_items(64, [0]) + stream_items(32, [0, 1])} == {1}  # at the bound
    assert max(item["count"] for item in stream_items(65, [0])) == 2
    for units, seeds in ((1000, list(range(3))), (15, list(range(64))), (1, list(range(100))), (65, [0])):
        items = stream_items(units, seeds)
        assert len(items) <= max(64, len(seeds))
        for seed in seeds:  # each epoch: consecutive runs, no gap, no overlap, every unit
            runs = [(item["first"], item["count"]) for item in items if item["seed"] == seed]
            assert [first for first, _ in runs] == [0, *(sum(runs[i][1] for i in range(k + 1))
                                                         for k in range(len(runs) - 1))]
            assert sum(count for _, count in runs) == units and min(count for _, count in runs) > 0
        assert all(sorted(epoch) == list(range(units)) for epoch in read(items, units))
    assert read(stream_items(1000, [3, 4]), 1000) == [epoch_order(1000, s, True).tolist() for s in (3, 4)]
    assert epoch_order(4, 3, train=False).tolist() == [0, 1, 2, 3]


def _big_dataset(root, rows: int, size: int) -> int:
    """Random-pixel clips (incompressible) so the bytes on disk are what streams through."""
    rng = np.random.default_rng(0)
    manifest = store.new_manifest({"frames": 16, "height": size, "width": size, "channels": 3, "joints": 25},
                                  source="test")
    data = [{"id": f"r{i}", "video": rng.integers(0, 255, 16 * size * size * 3, dtype=np.uint8).tobytes(),
             "skeleton": rng.normal(size=16 * 25 * 3).astype(np.float32).tobytes(),
             "captions": ["a person claps twice"]} for i in range(rows)]
    store.add_split(manifest, "big", store.write_split(data, root, "big"), rows, labelled=False)
    train_tokenizer(["a person claps twice", "someone waves"], root / "tokenizer.json", 100)
    store.save_manifest(root, manifest)
    return sum(len(d["video"]) for d in data)


@pytest.mark.slow
def test_streams_a_dataset_larger_than_the_object_store(tmp_path):
    """A fresh Ray with a 100 MiB object store streams ~120 MiB of clips (~480 MiB as float32 batches)."""
    raw_bytes = _big_dataset(tmp_path / "big", rows=600, size=64)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # pytest's tmp path is too long for Ray's sockets
    script = textwrap.dedent(f"""
        import json, os, resource
        os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1")
        import ray
        from oskar_ray.config import load_config
        from oskar_ray.data.pipeline import build_dataset, iter_train_batches
        ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
                 log_to_driver=False, _temp_dir={ray_tmp!r})
        cfg = load_config({REPO_CFG!r}, ["data.path={tmp_path / 'big'}", "modalities.video.height=64",
                                         "modalities.video.width=64", "data.cpus_per_task=0.5"])
        ds = build_dataset(cfg, "big", train=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rows, floats = 0, 0
        for batch in iter_train_batches(ds, cfg, 32, train=False):
            rows += len(batch["video"])
            floats += batch["video"].numel() * 4
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"rows": rows, "float_bytes": floats, "driver_rss_growth": rss - before}}))
        ray.shutdown()
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400,
                              cwd=str(Path(__file__).resolve().parents[1]))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith('{"rows"')][-1])
    assert raw_bytes > 100 * 1024**2 and result["rows"] == 600
    assert result["float_bytes"] > 4 * 100 * 1024**2
    # the driver never holds the dataset: its peak RSS (which also counts mapped object-store pages and
    # the prefetch buffers) grows by less than what streamed through (measured: ~340 of 450 MiB)
    assert result["driver_rss_growth"] < 0.8 * result["float_bytes"], result


def test_a_runs_stream_window_is_sized_from_its_batches_unless_set(smoke_cfg):
    from oskar_ray.data.pipeline import STREAM_BATCHES, stream_memory_mb

    small = stream_memory_mb(smoke_cfg, block_mb=16)
    # a 256-clip shuffle buffer and 8 batches of 32 smoke clips (~0.19 MB each): more than 4 blocks of 16 MB
    assert 95 < small < 100
    smoke_cfg.data.shuffle_buffer = 32
    assert stream_memory_mb(smoke_cfg, block_mb=16) == 64  # 288 clips fit in 4 blocks
    smoke_cfg.modalities["video"].height = smoke_cfg.modalities["video"].width = 224
    big = stream_memory_mb(smoke_cfg, block_mb=16)
    clip, clips = 16 * 3 * 224 * 224 * 4, STREAM_BATCHES * 32 + 32
    assert clips * clip / 2**20 < big < 1.1 * clips * clip / 2**20
    smoke_cfg.train.num_workers = 2  # each worker's buffer
    assert (clips + 32) * clip / 2**20 < stream_memory_mb(smoke_cfg, block_mb=16) < 1.1 * (clips + 32) * clip / 2**20
    smoke_cfg.data.max_memory_mb = 300
    assert stream_memory_mb(smoke_cfg, block_mb=16) == 300
