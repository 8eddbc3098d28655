"""SynthAction: determinism, splits, class balance, colour independence, language, CLI."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from oskar_ray.data import store
from oskar_ray.data.language import Fact, make_captions, make_qa
from oskar_ray.data.motion import ACTIONS, NUM_JOINTS, perform, sample_params
from oskar_ray.data.synth import LOW_SHOT, SynthSpec, generate, low_shot_indices, make_sample
from oskar_ray.data.tokenizer import PAD_ID, load_tokenizer


def test_same_seed_same_sample_other_seed_differs():
    a = make_sample(SynthSpec(seed=1), "train", 5)
    b = make_sample(SynthSpec(seed=1), "train", 5)
    c = make_sample(SynthSpec(seed=2), "train", 5)
    assert a == b
    assert a["video"] != c["video"] and a["skeleton"] != c["skeleton"]


def test_shapes_and_ranges():
    spec = SynthSpec(frames=8, height=24, width=40)
    row = make_sample(spec, "val", 0)
    video = np.frombuffer(row["video"], np.uint8).reshape(8, 24, 40, 3)
    skel = np.frombuffer(row["skeleton"], np.float32).reshape(8, NUM_JOINTS, 3)
    assert video.std() > 5 and np.isfinite(skel).all()
    assert abs(skel[:, 0].mean(axis=0)).max() < 1e-4  # centred on the spine base


def test_every_action_moves_differently():
    rng = np.random.default_rng(0)
    motions = []
    for a in range(len(ACTIONS)):
        params = sample_params(np.random.default_rng(0), a, 16, reps=2)
        motions.append(perform(params, rng))
    for i in range(len(ACTIONS)):
        for j in range(i + 1, len(ACTIONS)):
            assert np.abs(motions[i] - motions[j]).mean() > 0.01, (ACTIONS[i], ACTIONS[j])


def test_colour_carries_no_class_information():
    colours = defaultdict(set)
    for i in range(13 * 12):
        row = make_sample(SynthSpec(), "train", i)
        colours[row["action"]].add(json.loads(row["attributes"])["colour"])
    assert all(len(c) >= 5 for c in colours.values())  # every class shows many shirt colours


def test_captions_and_qa_mention_the_facts():
    rng = np.random.default_rng(0)
    fact = Fact("wave_left", "red", 2)
    caps = make_captions(fact, rng, n=5)
    assert all("red" in c for c in caps) and all("left" in c for c in caps)
    qa = make_qa(fact, rng)
    assert [t for _, _, t in qa] == ["action", "colour", "count", "side"]
    assert [a for _, a, _ in qa] == ["wave left", "red", "two", "left"]
    assert [t for _, _, t in make_qa(Fact("jump", "blue", 1), rng)] == ["action", "colour", "count"]


def test_low_shot_is_class_balanced():
    idx = low_shot_indices(1300, 0.1, seed=0)
    counts = np.bincount(np.array(idx) % len(ACTIONS), minlength=len(ACTIONS))
    assert (counts == counts[0]).all() and counts[0] == 10
    assert low_shot_indices(1300, 0.1, seed=0) == idx


def test_generated_dataset(synth_dir):
    manifest = store.load_manifest(synth_dir)
    splits = manifest["splits"]
    assert {"pretrain", "train", "val", "test", "untrimmed", *LOW_SHOT} <= set(splits)
    assert manifest["vocab"]["actions"] == list(ACTIONS) and len(ACTIONS) >= 10
    assert manifest["shapes"] == {"frames": 16, "height": 32, "width": 32, "channels": 3, "joints": 25}
    pre = pq.read_table(store.split_paths(synth_dir, "pretrain")).to_pydict()
    assert set(pre["action"]) == {-1} and not any(pre["questions"])  # labels hidden
    train = pq.read_table(store.split_paths(synth_dir, "train")).to_pydict()
    answers = manifest["vocab"]["answers"]
    for ans, ids in zip(train["answers"], train["answer_ids"], strict=True):
        assert [answers[i] for i in ids] == ans
    unt = pq.read_table(store.split_paths(synth_dir, "untrimmed")).to_pydict()
    for seg, labels in zip(unt["segments"], unt["segment_labels"], strict=True):
        pairs = np.array(seg).reshape(-1, 2)
        assert len(pairs) == len(labels) >= 1 and (pairs >= 0).all() and (pairs <= 1).all()
        assert (pairs[:, 1] > pairs[:, 0]).all() and (pairs[1:, 0] >= pairs[:-1, 1]).all()
    shot = pq.read_table(store.split_paths(synth_dir, "train_10pct")).to_pydict()
    by_id = dict(zip(train["id"], train["video"], strict=True))
    assert all(by_id[i] == v for i, v in zip(shot["id"], shot["video"], strict=True))
    tok = load_tokenizer(synth_dir / manifest["tokenizer"])
    assert tok.pad_token_id == PAD_ID and len(tok) <= 1024
    assert tok.decode(tok("a person in a red shirt claps")["input_ids"], skip_special_tokens=True) == \
        "a person in a red shirt claps"


def test_refuses_to_overwrite(synth_dir):
    with pytest.raises(FileExistsError, match="manifest.json"):
        generate(SynthSpec(samples=20, workers=1), synth_dir, progress=False)


@pytest.mark.slow
def test_parallel_equals_serial_and_cli(tmp_path, capsys):
    from oskar_ray.data.cli import main

    assert main(["synth", "--out", str(tmp_path / "a"), "--samples", "60", "--seed", "4", "--workers", "2"]) == 0
    assert "SynthAction: " in capsys.readouterr().out
    generate(SynthSpec(samples=60, seed=4, workers=1), tmp_path / "b", progress=False)
    for split in ("train", "untrimmed", "train_1pct"):
        a = pq.read_table(store.split_paths(tmp_path / "a", split)).to_pydict()
        b = pq.read_table(store.split_paths(tmp_path / "b", split)).to_pydict()
        assert a == b
    # the same texts give the same tokenizer (WordPiece training did not: different ids per run)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_pretrain_split_sized_alone_labelled_splits_unchanged(tmp_path):
    from oskar_ray.data.cli import main

    generate(SynthSpec(samples=40, workers=1), tmp_path / "half", progress=False)
    assert main(["synth", "--out", str(tmp_path / "big"), "--samples", "40", "--pretrain-samples", "70",
                 "--workers", "1"]) == 0
    half = json.loads((tmp_path / "half" / store.MANIFEST).read_text())["splits"]
    big = json.loads((tmp_path / "big" / store.MANIFEST).read_text())["splits"]
    assert big["pretrain"]["samples"] == 70 and half["pretrain"]["samples"] == 20
    for split in ("train", "val", "test"):
        assert big[split]["samples"] == half[split]["samples"]
        assert pq.read_table(store.split_paths(tmp_path / "big", split)).to_pydict() == \
            pq.read_table(store.split_paths(tmp_path / "half", split)).to_pydict()
    # a larger pretrain split only adds clips: the first 20 are the default split's
    first = pq.read_table(store.split_paths(tmp_path / "big", "pretrain")).slice(0, 20).to_pydict()
    assert first == pq.read_table(store.split_paths(tmp_path / "half", "pretrain")).to_pydict()
    with pytest.raises(SystemExit, match="--pretrain-samples"):
        main(["synth", "--out", str(tmp_path / "bad"), "--samples", "40", "--pretrain-samples", "-1"])
