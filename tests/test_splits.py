"""Logical splits on any dataset layout: a val split carved from train, low-shot subsets per class."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from oskar_ray.data import store
from oskar_ray.data.splits import SplitPlan, stored_labels, stratified_sample


@pytest.fixture
def no_val(synth_dir, tmp_path):
    """The test SynthAction set as a user's pretrain / train / test dataset: no val, no low-shot splits."""
    root = tmp_path / "user"
    shutil.copytree(synth_dir, root)
    manifest = store.load_manifest(root)
    for split in ("val", "train_1pct", "train_10pct"):
        del manifest["splits"][split]
    store.save_manifest(root, manifest)
    return str(root)


def test_val_is_carved_from_train_per_class_disjoint_and_reproducible(no_val):
    plan = SplitPlan(no_val, val_fraction=0.2, seed=0)
    labels = stored_labels(no_val, "train")
    val, train = plan.source("val"), plan.source("train")
    assert val.stored == train.stored == "train" and plan.has("val")
    assert not set(val.rows) & set(train.rows) and len(val.rows) + len(train.rows) == len(labels)
    for label in np.unique(labels):  # every class keeps train rows; classes with 2+ rows give val rows
        n = int((labels == label).sum())
        in_val = int((labels[val.rows] == label).sum())
        assert 1 <= in_val < n if n >= 2 else in_val == 0
        assert in_val == min(max(1, round(0.2 * n)), n - 1)
    assert np.array_equal(SplitPlan(no_val, val_fraction=0.2, seed=0).source("val").rows, val.rows)
    assert not np.array_equal(SplitPlan(no_val, val_fraction=0.2, seed=1).source("val").rows, val.rows)
    assert "carved val" in val.note and f"{len(val.rows)} rows" in val.note
    assert plan.source("test").rows is None and plan.source("test").stored == "test"


def test_lowshot_subsets_take_at_least_one_clip_per_class_from_the_carved_train(no_val):
    plan = SplitPlan(no_val, seed=0)
    labels = stored_labels(no_val, "train")
    train, one = plan.source("train"), plan.source("train_1pct")
    assert set(one.rows) <= set(train.rows)
    assert set(labels[one.rows]) == set(labels[train.rows])  # every class present, one clip each at 1 %
    assert len(plan.source("train_50pct").rows) == pytest.approx(len(train.rows) / 2, abs=len(set(labels)))


def test_a_stored_split_wins_over_a_carve(synth_dir):
    plan = SplitPlan(str(synth_dir))
    assert plan.source("val").rows is None and plan.source("train").rows is None
    assert plan.source("train_10pct").stored == "train_10pct"


def test_missing_splits_are_named(no_val):
    plan = SplitPlan(no_val, test="holdout")
    assert not plan.has("test")
    with pytest.raises(ValueError, match="no split 'holdout'.*pretrain, test, train"):
        plan.source("test")


def test_stratified_sample_keeps_one_row_per_class_out_when_asked():
    labels = np.array([0, 0, 1, 2, 2, 2])
    taken = stratified_sample(labels, np.arange(6), 0.9, 0, keep_one=True)
    assert 2 not in taken and (labels[taken] == 2).sum() == 2  # the single class-1 row stays; 2 of 3 taken
    assert len(stratified_sample(labels, np.arange(6), 0.01, 0, keep_one=False)) == 3  # one per class


def test_only_labelled_rows_are_carved_and_a_stored_lowshot_split_yields_to_a_carved_val(synth_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "partly_labelled"
    shutil.copytree(synth_dir, root)
    manifest = store.load_manifest(root)
    del manifest["splits"]["val"]  # train_1pct stays stored: drawn from all of train, it could overlap a carve
    store.save_manifest(root, manifest)
    shard = store.split_paths(root, "train")[0]
    table = pq.read_table(shard)
    action = table.column("action").to_numpy().copy()
    action[::3] = -1  # every third train clip unlabelled (e.g. an ingest whose label list covers some videos)
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", pa.array(action)), shard)
    plan = SplitPlan(str(root), seed=0)
    labels = stored_labels(str(root), "train")
    val, one = plan.source("val"), plan.source("train_1pct")
    assert (labels[val.rows] >= 0).all() and (labels[one.rows] >= 0).all()
    assert set(np.flatnonzero(labels < 0)) <= set(plan.source("train").rows)  # unlabelled rows stay in train
    assert one.stored == "train" and not set(one.rows) & set(val.rows) and "carved" in one.note
