"""Ingestion: stem matching, every skip counted in the report, --strict, adding splits, real samples, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from oskar_ray.data import store
from oskar_ray.data.cli import main
from oskar_ray.data.ingest import IngestError, IngestOptions, ingest
from oskar_ray.data.readers.video import write_video


@pytest.fixture
def raw(tmp_path, ntu_writer, pose):
    """vid1 (video+skeleton), vid2 (video+truncated skeleton), vid3 (video+NaN npy), vid4 (broken video)."""
    videos, skel = tmp_path / "videos", tmp_path / "skel"
    videos.mkdir()
    skel.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("vid1", "vid2", "vid3"):
        write_video(videos / f"{stem}.mp4", rng.integers(0, 255, (12, 40, 40, 3), dtype=np.uint8))
    (videos / "vid4.mp4").write_bytes(b"\x00" * 100)
    frames = [[("7", pose(0.0, t, 1.0))] for t in range(10)]
    ntu_writer(skel / "vid1.skeleton", frames)
    ntu_writer(skel / "vid2.skeleton", frames, truncate_lines=3)
    bad = np.stack([pose(0.0, t, 1.0) for t in range(6)])
    bad[2, 3, 1] = np.nan
    np.save(skel / "vid3.npy", bad)
    ntu_writer(skel / "ghost.skeleton", frames)  # no video with this stem
    (tmp_path / "caps.json").write_text(json.dumps(
        {"vid1.mp4": ["a person waves"], "vid2.mp4": [""], "vid3.mp4": ["someone jumps"], "zzz.mp4": ["x"]}))
    (tmp_path / "labels.txt").write_text("vid1.mp4 0\nvid2.mp4 1\nvid3.mp4 7\n")
    (tmp_path / "classes.txt").write_text("wave\njump\n")
    (tmp_path / "qa.json").write_text(json.dumps([
        {"question": "who waves?", "answer": "person", "video_id": 1, "id": 1},
        {"question": "what?", "answer": "jump", "video_id": 3, "id": 2},
        {"question": "lost?", "answer": "x", "video_id": 99, "id": 3}]))
    return tmp_path


def _opts(raw, **kw) -> IngestOptions:
    base = dict(out=raw / "ds", split="train", videos=raw / "videos", skeletons=raw / "skel",
                captions=raw / "caps.json", labels=raw / "labels.txt", label_map=raw / "classes.txt",
                qa=raw / "qa.json")
    return IngestOptions(**{**base, **kw})


def test_every_skip_is_counted(raw):
    report = ingest(_opts(raw), progress=False)
    assert report["samples_written"] == 3 and report["videos_found"] == 4
    assert report["by_reason"] == {
        "caption: empty caption": 1,
        "label: bad label line": 1,
        "skeleton: unmatched id (no video)": 1,
        "caption: unmatched id (no video)": 1,
        "qa: unmatched id (no video)": 1,
        "video: undecodable video": 1,
        "skeleton: truncated": 1,
        "skeleton: NaN/inf joint coordinates": 1,
        "sample: no readable modality": 1,
    }
    on_disk = json.loads((raw / "ds" / "ingest_report.json").read_text())["splits"]["train"]
    assert on_disk["skipped"] == 9 == len(on_disk["skips"])
    assert any("vid2.skeleton" in s["item"] and "truncated" in s["reason"] for s in on_disk["skips"])
    rows = pq.read_table(store.split_paths(raw / "ds", "train")).to_pydict()
    by_id = {i: k for k, i in enumerate(rows["id"])}
    v1, v2 = by_id["vid1"], by_id["vid2"]
    assert rows["present_skeleton"][v1] and not rows["present_skeleton"][v2] and rows["present_video"][v2]
    assert rows["captions"][v1] == ["a person waves"] and not rows["present_text"][v2]
    assert rows["action_name"][v1] == "wave" and rows["action"][by_id["vid3"]] == -1
    assert rows["questions"][v1] == ["who waves?"] and rows["answers"][by_id["vid3"]] == ["jump"]
    assert rows["video"][v1] == (raw / "videos" / "vid1.mp4").read_bytes()  # kept encoded, whole
    assert len(rows["skeleton"][v1]) == 16 * 25 * 3 * 4
    manifest = store.load_manifest(raw / "ds")
    assert manifest["vocab"]["actions"] == ["wave", "jump"] and (raw / "ds" / "tokenizer.json").exists()


def test_strict_turns_a_skip_into_an_error(raw):
    with pytest.raises(IngestError, match="--strict"):
        ingest(_opts(raw, strict=True), progress=False)
    assert not (raw / "ds" / "manifest.json").exists()


def test_second_split_shares_vocab_and_tokenizer(raw):
    ingest(_opts(raw), progress=False)
    tokenizer = (raw / "ds" / "tokenizer.json").read_bytes()
    (raw / "classes2.txt").write_text("run\nwave\n")
    (raw / "labels2.txt").write_text("vid1.mp4 0\nvid3.mp4 1\n")
    ingest(_opts(raw, split="val", labels=raw / "labels2.txt", label_map=raw / "classes2.txt"), progress=False)
    manifest = store.load_manifest(raw / "ds")
    assert manifest["vocab"]["actions"] == ["wave", "jump", "run"]  # appended: old ids unchanged
    assert set(manifest["splits"]) == {"train", "val"}
    assert (raw / "ds" / "tokenizer.json").read_bytes() == tokenizer
    val = pq.read_table(store.split_paths(raw / "ds", "val")).to_pydict()
    assert dict(zip(val["id"], val["action"], strict=True))["vid3"] == 0  # "wave" keeps id 0
    report = json.loads((raw / "ds" / "ingest_report.json").read_text())
    assert set(report["splits"]) == {"train", "val"}
    with pytest.raises(FileExistsError, match="split 'val' exists"):
        ingest(_opts(raw, split="val"), progress=False)
    with pytest.raises(ValueError, match="--height 16 differs"):
        ingest(_opts(raw, split="other", height=16, width=16), progress=False)


def test_cli(raw, capsys):
    argv = ["ingest", "--out", str(raw / "ds"), "--split", "train", "--videos", str(raw / "videos"),
            "--skeletons", str(raw / "skel"), "--captions", str(raw / "caps.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 samples written from 4 videos" in out and "skeleton: truncated" in out
    assert main([*argv[:4], "val", *argv[5:], "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err


def test_real_samples(shared_data, tmp_path):
    """Real clips + the NTU skeleton (paired with its RGB video) + mmaction2 captions + an MSVD-QA excerpt."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared_data / "videos" / "mmaction2" / "test.mp4", videos)  # caption key test.mp4
    shutil.copy(shared_data / "videos" / "mmaction2" / "part_0.mp4", videos / "vid1201.mp4")  # a QA video_id
    shutil.copy(shared_data / "videos" / "ntu_rgbd" / "S001C001P001R001A001_rgb.avi", videos)
    shutil.copy(shared_data / "videos" / "mmaction2" / "test.avi", videos / "clip_avi.avi")
    ann = shared_data / "annotations"
    opts = IngestOptions(
        out=tmp_path / "ds", split="train", videos=videos, skeletons=shared_data / "skeleton" / "ntu_rgbd",
        captions=ann / "mmaction2" / "video_text_test_list.json", qa=ann / "msvd_qa" / "val_qa_first200.json",
        labels=ann / "mmaction2" / "video_test_list.txt", label_map=shared_data / "labels" / "label_map_k400.txt",
        missing=[shared_data / "skeleton" / "ntu_rgbd" / "NTU_RGBD_samples_with_missing_skeletons.txt"],
        video_storage="raw")  # decoded once to 16 x 32 x 32 (tests/test_encoded_video.py keeps them encoded)
    report = ingest(opts, progress=False)
    assert report["samples_written"] == 4
    # 7 other MSVD videos are in the excerpt but not here: reported, not silently dropped
    assert report["by_reason"] == {"qa: unmatched id (no video)": 7}
    assert len(report["videos_without_skeleton"]) == 3
    rows = pq.read_table(store.split_paths(tmp_path / "ds", "train")).to_pydict()
    by_id = {i: k for k, i in enumerate(rows["id"])}
    ntu = by_id["S001C001P001R001A001_rgb"]
    assert rows["present_skeleton"][ntu] and rows["skeleton_bodies"][ntu] == 1
    assert rows["captions"][by_id["test"]][0] == "A person is cleaning a swimming pool"
    assert rows["action_name"][by_id["test"]] == "abseiling"  # label 0 of the K400 map
    assert len(rows["questions"][by_id["vid1201"]]) == 50
    video = np.frombuffer(rows["video"][by_id["clip_avi"]], np.uint8)
    assert video.size == 16 * 32 * 32 * 3 and video.std() > 10
