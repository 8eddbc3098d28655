"""A fourth modality defined here, in one place: ingest -> Parquet -> Ray Data -> Ray Train -> frozen probe.

The IMU modality below (an accelerometer trace read from ``.npy``) is defined inside a fixture: no project
file names it. Its classes have no importable module, so they reach Ray's workers by value with the work
sent there (oskar_ray/modalities/base.py, ``carried_modalities``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from oskar_ray.config import load_config
from oskar_ray.data import store
from oskar_ray.data.cli import main as data_main
from oskar_ray.data.ingest import IngestOptions, ingest
from oskar_ray.data.pipeline import iterate_local
from oskar_ray.data.preprocess import rows_without_modalities
from oskar_ray.data.readers.video import write_video
from oskar_ray.modalities import (
    BUILTIN_MODALITIES,
    Modality,
    ModalityConfig,
    ModalityTokenizer,
    carried_modalities,
    register_modality,
    unregister_modality,
)

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"
CLASSES = ("upright", "lying")
IMU_ONLY = ["modalities.imu.enabled=true", "modalities.video.enabled=false", "modalities.skeleton.enabled=false",
            "modalities.text.enabled=false",
            "budget.input_tokens=4", "budget.target_tokens=4", "eval.online_probe_views=[imu]"]


def _imu_modality() -> type[Modality]:
    """An IMU modality: ``(T, 3)`` float32 acceleration, resampled to ``samples``, one token per window."""

    @dataclass
    class ImuConfig(ModalityConfig):
        samples: int = 32
        channels: int = 3
        samples_per_token: int = 4

    class Imu(Modality):
        name = "imu"
        config_class = ImuConfig
        batch_keys = ("imu",)
        file_suffixes = (".npy",)

        @property
        def num_tokens(self) -> int:
            return self.cfg.samples // self.cfg.samples_per_token

        def time_spans(self) -> np.ndarray:
            start = np.arange(self.num_tokens) / self.num_tokens
            return np.stack([start, start + 1 / self.num_tokens], 1)

        def read_file(self, path: Path) -> bytes:
            try:
                trace = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise ValueError(f"not a .npy array ({err})") from None
            if trace.ndim != 2 or trace.shape[1] != self.cfg.channels:
                raise ValueError(f"shape {trace.shape}, expected (T, {self.cfg.channels})")
            if not np.isfinite(trace).all():
                raise ValueError("NaN/inf acceleration")
            return np.ascontiguousarray(trace, np.float32).tobytes()

        def decode(self, stored: bytes) -> dict[str, np.ndarray]:
            if len(stored) % (4 * self.cfg.channels):
                raise ValueError(f"{len(stored)} bytes is not whole (T, {self.cfg.channels}) float32 samples")
            trace = np.frombuffer(stored, np.float32).reshape(-1, self.cfg.channels)
            index = np.linspace(0, len(trace) - 1, self.cfg.samples).round().astype(int)
            return {"imu": trace[index]}

        def augment(self, arrays, rng):
            return {"imu": arrays["imu"] * np.float32(rng.uniform(0.9, 1.1))}

        def example(self, batch_size, generator):
            t = torch.linspace(0, 1, self.cfg.samples)[None, :, None]
            rate = 1 + 4 * torch.rand(batch_size, 1, 1, generator=generator)
            return {"imu": torch.sin(6.28 * rate * t).expand(-1, -1, self.cfg.channels).contiguous()}

        def build_tokenizer(self, dim):
            return ImuTokenizer(self, dim)

    class ImuTokenizer(ModalityTokenizer):
        def __init__(self, modality, dim):
            super().__init__(dim)
            c = modality.cfg
            self.window = c.samples_per_token
            self.proj = nn.Linear(c.samples_per_token * c.channels, dim)
            self.pos = nn.Parameter(torch.zeros(modality.num_tokens, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)

        def embed(self, batch):
            imu = batch["imu"]
            return self.proj(imu.reshape(imu.shape[0], -1, self.window * imu.shape[-1]))

        def position_embedding(self):
            return self.pos

    return Imu


@pytest.fixture
def imu():
    cls = register_modality(_imu_modality())
    yield cls
    unregister_modality("imu")


def _trace(label: int, rng: np.random.Generator) -> np.ndarray:
    """Gravity along the sensor's z axis (``upright``) or x axis (``lying``), plus motion of random rate, phase,
    amplitude and length."""
    t = np.linspace(0, 1, int(rng.integers(40, 90)))[:, None]
    motion = rng.uniform(0.2, 0.6, 3) * np.sin(6.28 * rng.uniform(1, 8) * t + rng.uniform(0, 6.28, 3))
    gravity = np.array([0.0, 0.0, 1.0]) if label == 0 else np.array([1.0, 0.0, 0.0])
    return (gravity + motion).astype(np.float32)


@pytest.fixture
def raw(tmp_path):
    """Per split: tiny videos, one IMU ``.npy`` per video (plus a broken one and one without a video), labels."""
    rng = np.random.default_rng(0)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, count in (("train", 40), ("test", 20)):
        videos, traces = tmp_path / split / "videos", tmp_path / split / "imu"
        videos.mkdir(parents=True)
        traces.mkdir()
        lines = []
        for i in range(count):
            label = i % 2
            write_video(videos / f"{split}{i:03d}.mp4", rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
            np.save(traces / f"{split}{i:03d}.npy", _trace(label, rng))
            lines.append(f"{split}{i:03d}.mp4 {label}")
        (tmp_path / split / "labels.txt").write_text("\n".join(lines) + "\n")
    write_video(tmp_path / "train" / "videos" / "broken.mp4", rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "train" / "imu" / "broken.npy", np.zeros(10, np.float32))  # 1-D: not (T, 3)
    np.save(tmp_path / "train" / "imu" / "orphan.npy", _trace(0, rng))  # no video with this stem
    return tmp_path


def _ingest(raw: Path, split: str, **kw) -> dict:
    opts = IngestOptions(out=raw / "ds", split=split, videos=raw / split / "videos", labels=raw / split / "labels.txt",
                         label_map=raw / "classes.txt", modalities={"imu": raw / split / "imu"}, **kw)
    return ingest(opts, progress=False)


def test_ingest_stores_the_added_modality_and_counts_bad_files(imu, raw):
    report = _ingest(raw, "train")
    assert report["samples_written"] == 41  # broken.mp4 keeps its video; only its IMU file is skipped
    assert report["by_reason"]["imu: shape"] == 1
    assert any(k["item"].endswith("broken.npy") and k["reason"] == "shape (10,), expected (T, 3)"
               for k in report["skips"])
    assert report["by_reason"]["imu: unmatched id (no video)"] == 1
    assert report["videos_without_imu"] == []
    manifest = store.load_manifest(raw / "ds")
    assert manifest["modalities"] == [*BUILTIN_MODALITIES, "imu"]
    assert manifest["splits"]["train"]["presence"] == {"video+imu": 40, "video": 1}  # runs count from it
    table = pq.read_table(store.split_paths(raw / "ds", "train"))
    rows = dict(zip(table["id"].to_pylist(), table.select(["imu", "present_imu"]).to_pylist(), strict=True))
    assert not rows["broken"]["present_imu"] and rows["train000"]["present_imu"]
    stored = np.frombuffer(rows["train000"]["imu"], np.float32).reshape(-1, 3)
    assert np.allclose(stored, np.load(raw / "train" / "imu" / "train000.npy"))


def test_a_later_split_may_leave_the_added_modality_out_without_its_plugin(imu, raw):
    _ingest(raw, "train")
    unregister_modality("imu")  # a later `oskar data ingest` without --plugin
    report = ingest(IngestOptions(out=raw / "ds", split="test", videos=raw / "test" / "videos"), progress=False)
    assert report["samples_written"] == 20
    table = pq.read_table(store.split_paths(raw / "ds", "test"), columns=["present_imu"])
    assert not any(table["present_imu"].to_pylist())  # stored as absent
    register_modality(imu)


def test_added_modality_streams_into_model_batches(imu, raw):
    _ingest(raw, "train")
    cfg = load_config(SMOKE, [f"data.path={raw / 'ds'}", "data.train_split=train", *IMU_ONLY])
    batch = next(iterate_local(raw / "ds", "train", cfg, batch_size=41, with_masks=False))
    assert batch["imu"].shape == (41, 32, 3) and batch["imu"].dtype == torch.float32
    assert batch["present"]["imu"].sum() == 40 and set(batch["present"]) == {"imu"}
    assert batch["imu"][~batch["present"]["imu"]].abs().sum() == 0  # absent: zeros
    # training batches leave out the row with no IMU (nothing to mask or predict); runs count it up front
    batch = next(iterate_local(raw / "ds", "train", cfg, batch_size=41, train=True))
    assert batch["present"]["imu"].all() and batch["imu"].shape == (40, 32, 3)
    assert batch["input_index"].shape == (40, 4) and batch["target_index"].shape == (40, 4)
    assert rows_without_modalities(raw / "ds", "train", ["imu"]) == (1, 41)


def test_added_modality_refusals_name_the_problem(imu, raw, tmp_path):
    other = tmp_path / "other"
    ingest(IngestOptions(out=other, split="a", videos=raw / "test" / "videos"), progress=False)
    with pytest.raises(ValueError, match=r"--modality imu: .* stored without it"):
        ingest(IngestOptions(out=other, split="b", videos=raw / "test" / "videos",
                             modalities={"imu": raw / "test" / "imu"}), progress=False)
    with pytest.raises(ValueError, match="built in"):
        ingest(IngestOptions(out=tmp_path / "x", split="a", videos=raw / "test" / "videos",
                             modalities={"video": raw / "test" / "imu"}), progress=False)
    cfg = load_config(SMOKE, ["modalities.imu.samples=16"])
    with pytest.raises(ValueError, match=r"modalities.imu is enabled but .*manifest.json stores no such"):
        next(iterate_local(other, "a", cfg, batch_size=2))
    unregister_modality("imu")
    with pytest.raises(ValueError, match=r"modalities.imu: unknown modality .*plugins"):
        load_config(SMOKE, ["modalities.imu.samples=16"])


def test_plugins_are_imported_by_name_and_failures_named(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "oskar_test_plugin.py").write_text("IMPORTED = True\n")
    cfg = load_config(SMOKE, ["plugins=[oskar_test_plugin]"])
    assert cfg.plugins == ["oskar_test_plugin"] and sys.modules["oskar_test_plugin"].IMPORTED
    with pytest.raises(ValueError, match=r"plugins\[0\]: cannot import 'no_such_module_xyz'"):
        load_config(SMOKE, ["plugins=[no_such_module_xyz]"])
    args = ["ingest", "--out", str(tmp_path / "d"), "--split", "a", "--videos", str(tmp_path)]
    assert data_main([*args, "--modality", "imu"]) == 2  # not NAME=DIR
    assert data_main([*args, "--plugin", "no_such_module_xyz", "--modality", "imu=x"]) == 2


def test_only_added_modalities_are_carried(imu):
    assert carried_modalities(["video", "imu", "text"]) == {"imu": imu}
    assert json.dumps(sorted(carried_modalities(BUILTIN_MODALITIES))) == "[]"


@pytest.mark.slow
def test_fourth_modality_end_to_end(imu, raw, ray_local, tmp_path):
    """Ingest, a few Ray Train steps on IMU alone, and a frozen probe on its target encoder."""
    from mlflow.tracking import MlflowClient

    from oskar_ray.eval import evaluate
    from oskar_ray.train.ray_trainer import pretrain

    _ingest(raw, "train")
    _ingest(raw, "test")
    cfg = load_config(SMOKE, [
        f"data.path={raw / 'ds'}", "data.train_split=train", *IMU_ONLY, "train.steps=6", "train.batch_size=8",
        "train.log_every=2", "train.checkpoint_every=6", "train.warmup_steps=2", "eval.rankme_every=6",
        "eval.online_probe_every=6", "eval.online_probe_k=3", "eval.val_fraction=0.3", "eval.batch_size=16",
        f"train.output_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/m.db", "tracking.experiment=imu",
        "data.shuffle_buffer=8", "eval.probe_epochs=5", "eval.finetune_epochs=0",
        "eval.action_protocols=[linear,knn]"])
    result = pretrain(cfg, run_name="imu")
    client = MlflowClient(cfg.tracking.uri)
    history = client.get_metric_history(result.run_id, "loss/imu")
    assert len(history) == 3 and all(np.isfinite(m.value) for m in history)
    assert client.get_metric_history(result.run_id, "probe/imu/knn_top1")
    metrics = evaluate(result.checkpoint, raw / "ds", ["action"], cfg, log=False, progress=False)
    assert set(metrics) >= {"eval/action/imu/linear/top1", "eval/action/imu/knn/top1"}
    assert not any(k.startswith(("eval/action/video/", "eval/action/fusion/")) for k in metrics)
    assert metrics["eval/action/unlabelled/train"] == 1  # broken.mp4: no label, left out of the probes
    # the posture is in the IMU alone (the videos are noise): far above chance (0.5)
    assert metrics["eval/action/imu/knn/top1"] >= 0.8 and metrics["eval/action/imu/linear/top1"] >= 0.8
