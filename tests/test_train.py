"""The single-process loop: learning, determinism, schedules, health guard."""

import math
import warnings

import numpy as np
import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.model import Oskar
from oskar_ray.train import NonFiniteLossError, build_optimizer, lr_at, train, train_step, weight_decay_at
from oskar_ray.train import step as step_module

SMOKE = "experiments/configs/smoke.yaml"


@pytest.mark.slow
def test_tiny_loss_falls_by_30_percent_in_100_steps():
    cfg = load_config(SMOKE, ["train.steps=100"])  # measured: last / first 10 steps 0.34
    history = train(cfg)
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last <= 0.7 * first, (first, last)


def test_same_seed_same_losses_for_20_steps():
    overrides = ["train.steps=20", "train.batch_size=4", "budget.exclusive=true"]
    runs = [[h["loss"] for h in train(load_config(SMOKE, overrides))] for _ in range(2)]
    assert runs[0] == runs[1]
    other = [h["loss"] for h in train(load_config(SMOKE, [*overrides, "train.seed=1"]))]
    assert other != runs[0]


def test_schedules():
    t = load_config(SMOKE, ["train.steps=100", "train.warmup_steps=10", "train.lr=1.0",
                           "train.min_lr=0.0", "train.weight_decay=0.04", "train.weight_decay_end=0.4"]).train
    assert lr_at(t, 0) == pytest.approx(0.1) and lr_at(t, 9) == pytest.approx(1.0)
    assert lr_at(t, 100) == pytest.approx(0.0, abs=1e-9)
    assert lr_at(t, 55) == pytest.approx(0.5)
    assert weight_decay_at(t, 0) == pytest.approx(0.04) and weight_decay_at(t, 100) == pytest.approx(0.4)


def test_step_applies_schedules_and_ema():
    cfg = load_config(SMOKE, ["train.batch_size=4", "ema.start=0.5", "ema.schedule=constant"])
    model = Oskar(cfg)
    optimizer = build_optimizer(model, cfg)
    target = model.target_encoders["video"].transformer.norm.weight
    before = target.clone()
    metrics = train_step(model, optimizer, model.example_batch(4), 5, cfg)
    assert metrics["lr"] == pytest.approx(lr_at(cfg.train, 5))
    assert metrics["momentum"] == 0.5 and metrics["grad_norm"] > 0
    fusion = model.fusion_encoder.transformer.norm.weight
    assert torch.allclose(target, 0.5 * before + 0.5 * fusion)
    decayed = [g for g in optimizer.param_groups if g["scheduled_decay"]][0]
    assert decayed["weight_decay"] == pytest.approx(weight_decay_at(cfg.train, 5))


def test_non_finite_loss_stops_with_a_clear_error():
    cfg = load_config(SMOKE, ["train.batch_size=2"])
    model = Oskar(cfg)
    batch = model.example_batch(2)
    batch["video"] = torch.full_like(batch["video"], float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_step(model, build_optimizer(model, cfg), batch, 0, cfg)


@pytest.mark.parametrize("capabilities, warns", [({"avx512_bf16": True}, False), ({"avx2": True}, True)])
def test_bf16_on_a_cpu_without_bf16_units_warns_once(monkeypatch, capabilities, warns):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    step_module._warn_once_if_cpu_lacks_bf16_units.cache_clear()
    cfg = load_config(SMOKE, ["train.steps=3", "train.batch_size=4", "train.precision=bf16"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    messages = [str(w.message) for w in caught if "train.precision=bf16" in str(w.message)]
    assert len(messages) == (1 if warns else 0)  # once per process, not once per step
    assert not warns or "set train.precision=fp32" in messages[0]
    step_module._warn_once_if_cpu_lacks_bf16_units.cache_clear()


@pytest.mark.parametrize("capabilities, device, expected", [
    ({"avx512_bf16": True}, "cpu", "bf16"), ({"avx2": True}, "cpu", "fp32"), ({"avx2": True}, "cuda", "bf16")])
def test_auto_precision_takes_bf16_only_where_it_is_faster(monkeypatch, capabilities, device, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = load_config(SMOKE, ["train.precision=auto"])
    assert step_module.resolved_precision(cfg, torch.device(device)) == expected
    assert step_module.resolved_precision(load_config(SMOKE, ["train.precision=fp32"]), torch.device(device)) == "fp32"


def test_bf16_on_cpu_autocasts_keeps_fp32_weights_and_tracks_fp32_losses():
    overrides = ["train.steps=15", "train.batch_size=8"]
    fp32 = [h["loss"] for h in train(load_config(SMOKE, overrides))]
    cfg = load_config(SMOKE, [*overrides, "train.precision=bf16"])
    model = Oskar(cfg)
    bf16 = [h["loss"] for h in train(cfg, model=model)]
    assert all(math.isfinite(x) for x in bf16) and bf16 != fp32  # the matmuls really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.mean(bf16[-5:]) == pytest.approx(np.mean(fp32[-5:]), rel=0.1)
    assert np.mean(bf16[-5:]) < np.mean(bf16[:5])


def test_a_resumed_run_streams_its_epoch_in_a_fresh_order_not_the_batches_it_already_trained_on():
    from oskar_ray.train.ray_trainer import EPOCH_SEED_STRIDE, stream_epochs

    cfg = load_config(SMOKE, ["train.steps=100", "train.batch_size=10", "train.seed=3"])
    fresh, note = stream_epochs(cfg, samples=210, start_step=0)  # 200 usable rows: 20 steps per epoch
    assert fresh == [3 + EPOCH_SEED_STRIDE * e for e in range(5)] and note == "epochs 0-4 from the start"
    resumed, note = stream_epochs(cfg, samples=210, start_step=50)  # mid-epoch 2
    assert resumed[1:] == fresh[3:] and resumed[0] not in fresh  # epoch 2 reshuffled, then epochs 3 and 4
    assert note.startswith(f"resumed at step 50: epoch 2 in a fresh order (seed {resumed[0]}), then epochs 3-4")
    assert stream_epochs(cfg, samples=210, start_step=50) == (resumed, note)  # reproducible
