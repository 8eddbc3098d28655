"""Temporal segments at ingest (ActivityNet JSON, THUMOS lists) → the ``untrimmed`` split localization reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from oskar_ray.data import store
from oskar_ray.data.cli import main as data_main
from oskar_ray.data.ingest import IngestError, IngestOptions, ingest
from oskar_ray.data.readers.annotations import read_segments
from oskar_ray.data.readers.common import ReadError
from oskar_ray.data.readers.video import write_video

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"


def _anet(path, database, wrap=True):
    path.write_text(json.dumps({"version": "1.3", "database": database} if wrap else database))
    return path


def test_activitynet_forms_and_bad_entries_are_named(tmp_path):
    found = read_segments(_anet(tmp_path / "anet.json", {
        "vidA": {"duration": 12.5, "subset": "validation", "annotations": [
            {"label": "Long jump", "segment": [1.0, 4.5]},
            {"label": "Long jump", "segment": [6.0, 3.0]},   # start >= end
            {"segment": [1.0, 2.0]},                          # no label
            {"label": "x", "segment": [1.0]}]},               # not [start, end]
        "vidB": {"annotations": []},                          # a video without segments: background only
        "vidC": "not an object"}))
    assert [(s.video, s.label, s.start, s.end) for s in found.segments["vidA"]] == [("vidA", "Long jump", 1.0, 4.5)]
    assert found.info["vidA"] == {"duration": 12.5, "subset": "validation"} and "vidB" not in found.segments
    assert found.problems == [
        ("anet.json:vidA.annotations[1]", "start >= end in field 'segment' (6.0, 3.0)"),
        ("anet.json:vidA.annotations[2]", "missing or empty field 'label' ({'segment': [1.0, 2.0]})"),
        ("anet.json:vidA.annotations[3]", "field 'segment' must be [start_s, end_s] ([1.0])"),
        ("anet.json:vidC", "video entry must be an object (got str)")]
    bare = read_segments(_anet(tmp_path / "bare.json", {"vidD.mp4": {"segments": [
        {"label": "run", "segment": ["0.5", 2]}]}}, wrap=False))
    assert [(s.video, s.start, s.end, s.where) for s in bare.segments["vidD"]] == \
        [("vidD", 0.5, 2.0, "bare.json:vidD.mp4.segments[0]")]
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReadError, match="list.json: segments JSON must be"):
        read_segments(tmp_path / "list.json")


def test_thumos_per_class_folder_and_single_labelled_list(tmp_path):
    folder = tmp_path / "thumos"
    folder.mkdir()
    (folder / "BaseballPitch_val.txt").write_text("video_validation_0000051  67.5  75.9\nvideo_validation_1 3 2\n")
    (folder / "Ambiguous_val.txt").write_text("video_validation_0000051 10.0 11.0\n")
    found = read_segments(folder)
    assert [(s.label, s.start, s.end) for s in found.segments["video_validation_0000051"]] == \
        [("BaseballPitch", 67.5, 75.9)]
    assert found.problems == [  # THUMOS's own Ambiguous marks are counted, not skips (--strict must still work)
        ("BaseballPitch_val.txt:2 video video_validation_1", "start >= end in fields start/end (3.0, 2.0)")]
    assert found.ambiguous == 1
    single = tmp_path / "all.txt"
    single.write_text("v1 0 1.5 Clean And Jerk\nv1 2 x Diving\nv2\n")
    found = read_segments(single)
    assert [(s.label, s.end) for s in found.segments["v1"]] == [("Clean And Jerk", 1.5)]
    assert [p[0] for p in found.problems] == ["all.txt:2 video v1", "all.txt:3"]
    assert "start/end not numbers" in found.problems[0][1]


@pytest.fixture
def untrimmed(tmp_path):
    """Three 4 s videos (40 frames at 10 fps): v_a (ActivityNet file naming), b, c."""
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("v_a", "b", "c"):
        write_video(videos / f"{stem}.mp4", rng.integers(0, 255, (40, 24, 24, 3), dtype=np.uint8), fps=10)
    (tmp_path / "classes.txt").write_text("jump\nwave\n")
    _anet(tmp_path / "anet.json", {
        "a": {"duration": 4.0, "annotations": [{"label": "wave", "segment": [1.0, 2.0]},
                                               {"label": "jump", "segment": [3.0, 6.0]},    # clipped to 4 s
                                               {"label": "jump", "segment": [5.0, 6.0]}]},  # wholly outside
        "b": {"duration": 9.0, "annotations": [{"label": "fly", "segment": [0.0, 1.0]},     # not in the map
                                               {"label": "wave", "segment": [-1.0, 2.0]}]},
        "zzz": {"annotations": [{"label": "wave", "segment": [0.0, 1.0]}]}})
    return tmp_path


def _opts(root, **kw) -> IngestOptions:
    base = dict(out=root / "ds", split="untrimmed", videos=root / "videos", segments=root / "anet.json",
                label_map=root / "classes.txt", frames=8, height=16, width=16)
    return IngestOptions(**{**base, **kw})


def test_segments_become_fractions_of_the_decoded_video_and_every_skip_is_named(untrimmed):
    report = ingest(_opts(untrimmed), progress=False)
    assert report["by_reason"] == {"segment: segment outside the video": 1, "segment: label not in the label map": 1,
                                   "segment: unmatched id (no video)": 1}
    skips = {s["item"]: s["reason"] for s in report["skips"]}
    assert "field segment [5.0, 6.0] s; video v_a lasts 4.00 s" in skips["anet.json:a.annotations[2]"]
    assert "field label 'fly'; --label-map classes.txt" in skips["anet.json:b.annotations[0]"]
    assert "no video with stem 'zzz'" in skips["anet.json:zzz.annotations[0]"]
    assert sorted(c["item"] for c in report["segments_clipped"]) == ["anet.json:a.annotations[1]",
                                                                     "anet.json:b.annotations[1]"]
    assert report["segment_duration_mismatch"] == [{"video": "b", "annotated_s": 9.0, "decoded_s": 4.0,
                                                    "used": "decoded (the stored frames span it)"}]
    assert report["videos_without_segments"] == ["c"]
    manifest = store.load_manifest(untrimmed / "ds")
    assert manifest["vocab"]["actions"] == ["jump", "wave"] and manifest["splits"]["untrimmed"]["has_segments"]
    rows = pq.read_table(store.split_paths(untrimmed / "ds", "untrimmed")).to_pydict()
    by_id = {i: k for k, i in enumerate(rows["id"])}
    a, b = by_id["v_a"], by_id["b"]
    assert rows["segments"][a] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # seconds / 4 s decoded
    assert rows["segment_labels"][a] == [1, 0] and rows["segment_labels"][b] == [1]
    assert rows["segments"][b] == pytest.approx([0.0, 0.5]) and rows["segments"][by_id["c"]] == []
    attrs = json.loads(rows["attributes"][a])
    assert attrs["duration_s"] == 4.0 and attrs["segments_s"] == [[1.0, 2.0, "wave"], [3.0, 4.0, "jump"]]


def test_without_a_label_map_segment_labels_extend_the_actions_and_strict_fails(untrimmed):
    report = ingest(_opts(untrimmed, label_map=None, split="long"), progress=False)
    assert "segment: label not in the label map" not in report["by_reason"]
    assert report["segments_split"] == "localization reads the split named 'untrimmed', not 'long'"
    assert store.load_manifest(untrimmed / "ds")["vocab"]["actions"] == ["wave", "jump", "fly"]
    with pytest.raises(IngestError, match="--strict: segment"):
        ingest(_opts(untrimmed, out=untrimmed / "strict", strict=True), progress=False)
    with pytest.raises(ValueError, match="--label-map alone names the classes of --segments"):
        ingest(_opts(untrimmed, out=untrimmed / "x", segments=None), progress=False)


def test_cli_segments_flag(untrimmed, capsys):
    argv = ["ingest", "--out", str(untrimmed / "ds"), "--split", "untrimmed", "--videos", str(untrimmed / "videos"),
            "--segments", str(untrimmed / "anet.json"), "--label-map", str(untrimmed / "classes.txt"),
            "--frames", "8", "--size", "16"]
    assert data_main(argv) == 0
    out = capsys.readouterr().out
    assert "segment: segment outside the video" in out and "2 segment(s) clipped" in out
    argv[2], argv[8] = str(untrimmed / "other"), str(untrimmed / "nope.json")
    assert data_main(argv) == 2
    assert "--segments: " in capsys.readouterr().err


def test_oskar_eval_localizes_on_an_ingested_untrimmed_split(shared_data, tmp_path):
    """Real videos + a hand-written ActivityNet JSON → `oskar data ingest --segments` → `oskar eval --tasks
    localization` (a random-init checkpoint: this checks the path, not the score)."""
    from oskar_ray.config import load_config
    from oskar_ray.eval.cli import main as eval_main
    from oskar_ray.eval.requirements import unservable
    from oskar_ray.model import Oskar
    from oskar_ray.train import build_optimizer
    from oskar_ray.train.checkpoint import TrainState, save_checkpoint

    videos = tmp_path / "videos"
    videos.mkdir()
    names = {"demo": "mmaction2/demo.mp4", "test": "mmaction2/test.mp4",
             "v_clean": "mmskeleton_kinetics/clean_and_jerk.mp4", "skate": "mmskeleton_kinetics/skateboarding.mp4",
             "taichi": "mmskeleton_kinetics/ta_chi.mp4"}
    for stem, rel in names.items():
        shutil.copy(shared_data / "videos" / rel, videos / f"{stem}{(shared_data / 'videos' / rel).suffix}")
    _anet(tmp_path / "anet.json", {  # 10 s clips; the last two (stored order) are the scored part
        "clean": {"duration": 10.0, "annotations": [{"label": "lift", "segment": [2.0, 8.0]}]},
        "demo": {"duration": 10.0, "annotations": [{"label": "wrestle", "segment": [1.0, 6.0]}]},
        "skate": {"duration": 10.0, "annotations": [{"label": "lift", "segment": [0.0, 4.0]},
                                                     {"label": "wrestle", "segment": [5.0, 12.0]}]},
        "taichi": {"duration": 10.0, "annotations": [{"label": "wrestle", "segment": [3.0, 9.0]}]},
        "test": {"duration": 10.0, "annotations": [{"label": "lift", "segment": [4.0, 7.0]}]}})
    ds = tmp_path / "ds"
    assert data_main(["ingest", "--out", str(ds), "--split", "untrimmed", "--videos", str(videos), "--segments",
                      str(tmp_path / "anet.json"), "--frames", "32", "--size", "32"]) == 0
    assert unservable(["localization"], str(ds)) == {}
    cfg = load_config(SMOKE, [f"data.path={ds}", "eval.batch_size=16"])
    model = Oskar(cfg)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, build_optimizer(model, cfg), cfg, TrainState(0, ""))
    out = tmp_path / "out"
    assert eval_main(["--checkpoint", str(ckpt), "--tasks", "localization", "--no-log", "--quiet",
                      "--out", str(out)]) == 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    for th in ("0.3", "0.5", "0.7"):
        assert 0.0 <= metrics[f"eval/localization/mAP_{th}"] <= 1.0
    # an untrimmed split ingested without --segments is refused up front, naming the flag
    assert data_main(["ingest", "--out", str(tmp_path / "bare"), "--split", "untrimmed", "--videos", str(videos),
                      "--frames", "8", "--size", "16"]) == 0
    assert "split untrimmed has no temporal segments (ingest it with --segments)" in \
        unservable(["localization"], str(tmp_path / "bare"))["localization"]
