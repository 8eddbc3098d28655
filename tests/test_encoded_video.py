"""Encoded video storage: whole videos kept as container bytes, clips decoded per visit in the data path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.data import store
from oskar_ray.data.ingest import IngestOptions, ingest
from oskar_ray.data.pipeline import iterate_local
from oskar_ray.data.preprocess import DatasetMeta, preprocess_batch
from oskar_ray.data.readers.clips import ClipPlan, centre_box, decode_clip
from oskar_ray.data.readers.video import VIDEO_EXTENSIONS, write_video

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments/configs/smoke.yaml"


def _moving(frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A bright square moving right one pixel per frame over noise: every frame differs."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(0, 60, (frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        x = t % (width - 8)
        clip[t, 10:18, x:x + 8] = 255
    return clip


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(6):
        write_video(folder / f"long{i}.mp4", _moving(90, seed=i), fps=30)
    write_video(folder / "short.mp4", _moving(10, seed=9), fps=30)  # shorter than one 16 x 4 window
    (folder / "broken.mp4").write_bytes(b"\x00" * 300)
    return folder


def _cfg(*extra):
    return load_config(SMOKE, ["modalities.skeleton.enabled=false", "modalities.text.enabled=false",
                               "budget.input_tokens=32", "budget.target_tokens=16", *extra])


def test_ingest_keeps_whole_videos_encoded_and_names_corrupt_files(videos, tmp_path):
    report = ingest(IngestOptions(out=tmp_path / "ds", split="train", videos=videos), progress=False)
    assert report["samples_written"] == 7
    assert report["by_reason"] == {"video: undecodable video": 1, "sample: no readable modality": 1}
    assert store.load_manifest(tmp_path / "ds")["splits"]["train"]["video_storage"] == "encoded"
    table = pq.read_table(store.split_paths(tmp_path / "ds", "train")).to_pydict()
    row = table["id"].index("long0")
    assert table["video"][row] == (videos / "long0.mp4").read_bytes()  # the source bytes, whole
    attrs = json.loads(table["attributes"][row])
    assert attrs["frames"] == 90 and attrs["fps"] == 30 and (attrs["width"], attrs["height"]) == (64, 48)
    assert attrs["codec"] == "mpeg4" and attrs["duration_s"] == 3.0


def test_random_clips_differ_across_epochs_and_repeat_under_the_seed(videos, tmp_path):
    ingest(IngestOptions(out=tmp_path / "ds", split="train", videos=videos), progress=False)
    cfg = _cfg()

    def epochs(seed):
        return [b["video"] for b in iterate_local(tmp_path / "ds", "train", cfg, batch_size=8, seed=seed,
                                                 train=True, epochs=2, with_masks=False)]

    first, again = epochs(seed=3), epochs(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # same seed, same clips
    assert not torch.equal(first[0], first[1])  # epoch 2 draws other windows and crops
    assert first[0].shape == (7, 16, 3, 32, 32)


def test_a_run_streams_its_epochs_of_encoded_videos_through_ray_data_each_video_once_per_epoch(
        videos, tmp_path, ray_local):
    """A small encoded split streamed for several epochs (what a short user dataset gets): every clip of every
    epoch, other windows in each epoch — read by the project's tasks, 8 decoded clips at a time, each read unit
    with its epoch's seed; not by Ray Data's Parquet reader, whose listing task and footer actor came once per
    epoch (a process start each: 20 epochs of 24 videos took 41 s to the first batch on 2 cores), and as one
    operator over every epoch's read units, not a union of per-epoch datasets (which ran every epoch's tasks
    at once)."""
    from oskar_ray.data.pipeline import ENCODED_MAP_BATCH_SIZE, _read_and_preprocess, build_dataset

    for i in range(6, 9):  # 10 readable videos: one shard, more than one 8-clip batch
        write_video(videos / f"long{i}.mp4", _moving(90, seed=i), fps=30)
    ingest(IngestOptions(out=tmp_path / "ds", split="pretrain", videos=videos), progress=False)
    cfg = _cfg(f"data.path={tmp_path / 'ds'}")
    ds = build_dataset(cfg, "pretrain", train=True, seed=[11, 12, 13], with_masks=False)
    clips = [clip.tobytes() for block in ds.iter_batches(batch_size=None, batch_format="numpy")
             for clip, present in zip(block["video"], block["present_video"], strict=True) if present]
    assert len(clips) == 3 * 10  # 9 long videos and the short one, once per epoch
    assert len(set(clips)) >= 3 * 9  # each epoch draws its own windows and crops
    stats = ds.stats()
    assert "ReadParquet" not in stats and "ListFiles" not in stats and "Union" not in stats

    [shard] = store.split_paths(tmp_path / "ds", "pretrain")
    kwargs = {"cfg": cfg, "meta": DatasetMeta.load(tmp_path / "ds", "pretrain"), "train": True,
              "with_masks": False, "modalities": {}, "rows": ENCODED_MAP_BATCH_SIZE}
    two_epochs = {"seed": np.array([11, 12]), "first": np.array([0, 0]), "count": np.array([1, 1])}
    batches = list(_read_and_preprocess(two_epochs, units=[{"path": shard, "row_group": -1}], **kwargs))
    assert [len(b["video"]) for b in batches] == [8, 2, 8, 2]
    assert not np.array_equal(batches[0]["video"], batches[2]["video"])  # the same rows, each epoch's own seed


def test_eval_clips_are_deterministic_and_multi_clip_features_average(videos, tmp_path):
    from oskar_ray.eval.features import FeatureCache
    from oskar_ray.model import Oskar

    for split in ("train", "test"):
        ingest(IngestOptions(out=tmp_path / "ds", split=split, videos=videos), progress=False)
    cfg = _cfg()
    one = next(iterate_local(tmp_path / "ds", "test", cfg, batch_size=8, with_masks=False))["video"]
    assert torch.equal(one, next(iterate_local(tmp_path / "ds", "test", cfg, batch_size=8, with_masks=False))["video"])
    model = Oskar(cfg).eval()

    def features(*extra):
        cache = FeatureCache(model, tmp_path / "ds", _cfg(*extra), ["target:video"], progress=False)
        return cache.get("test", "target:video")

    single, multi = features(), features("eval.video_segments=2", "eval.video_views=3")
    assert multi.pooled.shape == single.pooled.shape == (7, cfg.model.dim) and multi.tokens.shape[0] == 7
    assert not torch.allclose(multi.pooled, single.pooled)  # six clips averaged, not the centre one
    assert torch.equal(multi.pooled, features("eval.video_segments=2", "eval.video_views=3").pooled)


def test_a_corrupt_video_in_the_stream_is_skipped_and_counted(videos, tmp_path):
    ingest(IngestOptions(out=tmp_path / "ds", split="train", videos=videos), progress=False)
    meta = DatasetMeta.load(tmp_path / "ds", "train")
    rows = pq.read_table(store.split_paths(tmp_path / "ds", "train"), columns=meta.read_columns).to_pydict()
    good = rows["video"][0]
    rows["video"][0] = good[: len(good) // 8]  # truncated mid-stream after ingest (a bad disk, a partial copy)
    rows["video"][1] = b"not a video at all"
    out = preprocess_batch(rows, _cfg(), meta, train=True, rng=np.random.default_rng(0), with_masks=False)
    assert out["skipped_video"].sum() >= 1 and not out["present_video"][1]
    assert out["skipped_video"][1] == 1 and np.abs(out["video"][1]).sum() == 0
    short = rows["id"].index("short")
    assert out["padded_video"][short] == 1 and out["present_video"][short]
    masked = preprocess_batch(rows, _cfg(), meta, train=True, rng=np.random.default_rng(0))
    assert masked["skipped_video"].sum() == out["skipped_video"].sum()  # dropped rows keep their count


def test_seeking_decodes_the_same_frames_as_decoding_from_the_start(tmp_path):
    path = write_video(tmp_path / "gop.mp4", _moving(120), fps=30)
    data = path.read_bytes()
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        keyframes = sum(p.is_keyframe for p in av.open(str(path)).demux(video=0))
    assert keyframes > 2  # a window at frame 70 starts by seeking, not at frame 0
    plan = ClipPlan(frames=8, step=3)
    index, _ = plan.window(len(every), 70)
    box = centre_box(64, 48)
    clip = decode_clip(data, index, box, (48, 48), fps=30.0)
    expected = np.stack([every[i][:, 8:56] for i in index])
    assert clip.shape == (8, 48, 48, 3)
    assert np.abs(clip.astype(int) - expected.astype(int)).mean() < 2  # same frames (swscale rounding aside)


def test_clip_plan_windows_and_boxes():
    plan = ClipPlan(frames=4, step=2, scale=(0.3, 1.0), aspect=(0.75, 1.35))
    index, padded = plan.window(100, 10)
    assert index.tolist() == [10, 12, 14, 16] and not padded
    index, padded = plan.window(5, 0)
    assert index.tolist() == [0, 2, 4, 4] and padded
    assert [w[0][0] for w in plan.eval_windows(100, 3)] == [0, 46, 93]
    boxes = plan.eval_boxes(320, 240, 3)
    assert [b[0] for b in boxes] == [0, 40, 80] and all(b[2:] == (240, 240) for b in boxes)
    rng = np.random.default_rng(0)
    for _ in range(50):
        (x, y, w, h), flip = plan.train_box(320, 240, rng)
        assert x >= 0 and x + w <= 320 and y >= 0 and y + h <= 240 and not flip
        assert 0.29 * 320 * 240 <= w * h <= 320 * 240


def test_sample_videos_ingest_encoded_within_one_and_a_half_times_their_bytes(shared_data, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for path in (p for p in (shared_data / "videos").rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        shutil.copy(path, folder / f"{path.parent.name}_{path.stem}_{path.suffix[1:]}{path.suffix}")  # test.avi, .mp4
    sources = sorted(folder.iterdir())
    report = ingest(IngestOptions(out=tmp_path / "ds", split="all", videos=folder), progress=False)
    assert report["samples_written"] == len(sources)
    stored = sum(p.stat().st_size for p in (tmp_path / "ds" / "all").glob("*.parquet"))
    assert stored <= 1.5 * sum(p.stat().st_size for p in sources)
    cfg = load_config(SMOKE, ["modalities.video.height=224", "modalities.video.width=224",
                              "modalities.video.patch=16", "modalities.skeleton.enabled=false",
                              "modalities.text.enabled=false"])
    batch = next(iterate_local(tmp_path / "ds", "all", cfg, batch_size=len(sources), train=True, with_masks=False))
    assert batch["video"].shape == (len(sources), 16, 3, 224, 224) and batch["present"]["video"].all()


@pytest.mark.slow
def test_a_vit_s_config_at_224_trains_through_ray_data_and_ray_train(videos, tmp_path, ray_local):
    """experiments/configs/vit_s224.yaml (ViT-S, 16 x 224 x 224, patch 16) on encoded videos: a few real steps."""
    from mlflow.tracking import MlflowClient

    from oskar_ray.train.ray_trainer import pretrain

    ingest(IngestOptions(out=tmp_path / "ds", split="pretrain", videos=videos), progress=False)
    cfg = load_config(REPO / "experiments/configs/vit_s224.yaml", [
        f"data.path={tmp_path / 'ds'}", "train.use_gpu=false", "train.precision=fp32", "train.cpus_per_worker=0.5",
        "train.batch_size=2", "train.steps=2", "train.log_every=1", "train.checkpoint_every=2",
        "train.warmup_steps=1", "modalities.skeleton.enabled=false", "modalities.text.enabled=false",
        "eval.batch_size=4", "data.shuffle_buffer=4", f"train.output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path}/m.db"])
    assert (cfg.model.dim, cfg.modalities["video"].height, cfg.modalities["video"].patch) == (384, 224, 16)
    result = pretrain(cfg, run_name="vit-s224")
    client = MlflowClient(cfg.tracking.uri)
    losses = [m.value for m in client.get_metric_history(result.run_id, "loss/video")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert [m.value for m in client.get_metric_history(result.run_id, "data/skipped_video")][-1] >= 0


def test_the_skeleton_is_cut_to_the_time_the_video_window_covers():
    from oskar_ray.data.preprocess import _skeletons

    cfg = load_config(SMOKE)
    ramp = np.repeat(np.arange(100, dtype=np.float32)[:, None, None], 25, axis=1).repeat(3, axis=2)  # value = t
    meta = DatasetMeta("r", "s", 32, 32, 25, "t", True, False)
    rows = {"id": ["a", "b"], "skeleton": [ramp.tobytes(), ramp.tobytes()]}
    spans = np.array([[0.5, 0.6], [0.0, 1.0]])
    out = _skeletons(rows, cfg, meta, False, np.random.default_rng(0), spans)
    assert out[0].min() >= 50 and out[0].max() <= 59  # the window's tenth of the clip only
    assert out[1].min() < 10 and out[1].max() > 90  # the whole clip


def test_reencoding_only_what_exceeds_the_limits_at_an_exact_rate(videos, tmp_path):
    opts = dict(out=tmp_path / "ds", videos=videos, reencode_fps=10)
    ingest(IngestOptions(split="slow", **opts), progress=False)
    ingest(IngestOptions(split="same", **{**opts, "reencode_fps": 30, "reencode_short_side": 48}), progress=False)
    slow = pq.read_table(store.split_paths(tmp_path / "ds", "slow")).to_pydict()
    attrs = json.loads(slow["attributes"][slow["id"].index("long0")])
    assert attrs["fps"] == 10 and attrs["frames"] == 30 and attrs["duration_s"] == 3.0  # every 3rd frame
    same = pq.read_table(store.split_paths(tmp_path / "ds", "same")).to_pydict()
    assert same["video"][same["id"].index("long0")] == (videos / "long0.mp4").read_bytes()  # within both limits


def test_decode_tasks_reserve_a_whole_cpu(videos, tmp_path):
    from oskar_ray.data.pipeline import task_cpus

    ingest(IngestOptions(out=tmp_path / "ds", split="pretrain", videos=videos), progress=False)
    assert task_cpus(_cfg(f"data.path={tmp_path / 'ds'}")) == 1.0
    assert task_cpus(_cfg()) == 0.25  # the built-in benchmark: raw frames, fractional tasks
