"""The Oskar model: forward contract, EMA, predictor size, partial batches, features."""

import copy

import numpy as np
import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.model import Oskar, momentum_at

SMOKE = "experiments/configs/smoke.yaml"


def _model(*overrides):
    torch.manual_seed(0)
    return Oskar(load_config(SMOKE, list(overrides)))


def test_forward_contract():
    model = _model()
    out = model(model.example_batch(6))
    assert set(out) >= {"loss", "loss/video", "loss/skeleton", "loss/text", "n_input_tokens", "n_target_tokens"}
    assert out["n_input_tokens"].tolist() == [64] * 6 and out["n_target_tokens"].tolist() == [32] * 6
    assert torch.isfinite(out["loss"])
    assert isinstance(model.target_encoders, torch.nn.ModuleDict)
    assert set(model.target_encoders) == {"video", "skeleton", "text"}


def test_ema_update_equation_and_no_grad_to_targets():
    model = _model()
    out = model(model.example_batch(4))
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoders.parameters())
    with torch.no_grad():  # make fusion differ from targets so the update is visible
        for p in model.fusion_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = copy.deepcopy(model.target_encoders.state_dict())
    fusion = dict(model.fusion_encoder.named_parameters())
    model.update_targets(0.9)
    for key, new in model.target_encoders.state_dict().items():
        name = key.split(".", 1)[1]
        if name in fusion:
            assert torch.allclose(new, 0.9 * before[key] + 0.1 * fusion[name], atol=1e-6), key


def test_per_modality_momentum_and_shared_target_encoder():
    model = _model("ema.modality_start.text=0.5")
    with torch.no_grad():
        for p in model.fusion_encoder.parameters():
            p.add_(1.0)
    video_before = model.target_encoders["video"].transformer.norm.bias.clone()
    text_before = model.target_encoders["text"].transformer.norm.bias.clone()
    model.update_targets({"video": 1.0, "skeleton": 1.0, "text": 0.5})
    assert torch.equal(model.target_encoders["video"].transformer.norm.bias, video_before)
    assert not torch.equal(model.target_encoders["text"].transformer.norm.bias, text_before)

    shared = _model("ema.per_modality=false")
    assert shared.target_encoders["video"] is shared.target_encoders["text"]
    assert torch.isfinite(shared(shared.example_batch(4))["loss"])


def test_per_modality_schedules_give_target_encoders_their_own_weights():
    """ema.per_modality is real: modalities on their own schedules end up with different target blocks after
    training steps; under one shared schedule the copies of the same fusion encoder stay identical."""
    from oskar_ray.train import train

    def blocks(model, name):
        return torch.cat([p.flatten() for p in model.target_encoders[name].transformer.parameters()])

    steps = ["train.steps=3", "train.batch_size=4", "ema.start=0.5", "ema.end=0.9"]
    own = load_config(SMOKE, [*steps, "ema.modality_end.skeleton=0.6", "ema.modality_schedule.skeleton=constant"])
    assert momentum_at(own, 3, 3) == {"video": 0.9, "skeleton": 0.5, "text": 0.9}
    model = Oskar(own)
    train(own, model=model)
    assert not torch.allclose(blocks(model, "video"), blocks(model, "skeleton"))
    assert torch.allclose(blocks(model, "video"), blocks(model, "text"))  # same schedule: same weights
    with pytest.raises(ValueError, match="ema.modality_schedule.video must be cosine, linear or constant"):
        load_config(SMOKE, ["ema.modality_schedule.video=step"])
    with pytest.raises(ValueError, match="ema.modality_end needs ema.per_modality=true"):
        load_config(SMOKE, ["ema.per_modality=false", "ema.modality_end.video=0.9"])


def test_momentum_schedule_endpoints():
    cfg = load_config(SMOKE, ["ema.start=0.99", "ema.end=1.0", "ema.modality_start.text=0.9"])
    assert momentum_at(cfg, 0, 100) == {"video": 0.99, "skeleton": 0.99, "text": 0.9}
    assert momentum_at(cfg, 100, 100) == {"video": 1.0, "skeleton": 1.0, "text": 1.0}
    mid = momentum_at(cfg, 50, 100)["video"]
    assert 0.99 < mid < 1.0
    linear = load_config(SMOKE, ["ema.schedule=linear", "ema.start=0.9"])
    assert momentum_at(linear, 25, 100)["video"] == pytest.approx(0.925)


def test_predictor_is_small():
    model = _model()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model.predictor) < n(model.fusion_encoder) / 4


def test_partially_missing_and_absent_modalities():
    model = _model()
    present = {"video": [True, False, True, False], "skeleton": [True, True, False, True]}
    out = model(model.example_batch(4, present=present))
    assert torch.isfinite(out["loss"]) and out["n_input_tokens"].tolist() == [64] * 4
    batch = model.example_batch(4)
    del batch["text_ids"], batch["text_mask"]
    out = model(batch)
    assert "loss/text" not in out and torch.isfinite(out["loss"])
    out["loss"].backward()


@pytest.mark.parametrize("overrides", [
    ("predictor.per_modality=true",),
    ("predictor.kind=concat",),
    ("predictor.kind=concat", "predictor.per_modality=true"),
    ("model.loss=l1", "budget.exclusive=true"),
])
def test_variants_train(overrides):
    model = _model(*overrides)
    out = model(model.example_batch(4, present={"video": [True, True, False, True]}))
    out["loss"].backward()
    grads = [p.grad for p in model.predictor.parameters() if p.grad is not None]
    assert grads and torch.isfinite(out["loss"])


def test_precomputed_indices_are_used():
    model = _model()
    batch = model.example_batch(2)
    drawn = model.sampler.sample_batch(batch, np.random.default_rng(0))
    a = model({**batch, **{k: torch.as_tensor(v) for k, v in drawn.items()}})["loss"]
    b = model({**batch, **{k: torch.as_tensor(v) for k, v in drawn.items()}})["loss"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="input_index"):
        model({**batch, "input_index": torch.zeros(2, 10, dtype=torch.long), "target_index": drawn["target_index"]})


def test_encode_shapes_and_absent_modalities():
    model = _model()
    batch = model.example_batch(5, present={"text": [True, False, True, True, True]})
    for encoder in ("target", "fusion"):
        pooled = model.encode(batch, encoder=encoder)
        assert pooled.shape == (5, 128) and torch.isfinite(pooled).all()
        tokens, valid = model.encode_tokens(batch, ["video", "text"], encoder=encoder)
        assert tokens.shape == (5, 128 + 24, 128) and valid.shape == (5, 152)
        assert not valid[1, 128:].any()
    text_only = model.encode(batch, ["text"])
    assert torch.isfinite(text_only).all() and text_only[1].abs().sum() == 0
    with pytest.raises(ValueError, match="encoder"):
        model.encode(batch, encoder="student")


def test_safetensors_round_trip(tmp_path):
    model = _model()
    model.save_weights(tmp_path / "w.safetensors")
    other = _model("train.seed=1")
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_weights(tmp_path / "w.safetensors")
    batch = model.example_batch(2)
    assert torch.allclose(model.encode(batch), other.encode(batch))
    wrong = _model("model.depth=2")
    with pytest.raises(ValueError, match="do not match"):
        wrong.load_weights(tmp_path / "w.safetensors")


def test_a_checkpoint_from_before_align_to_was_a_list_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model("model.align_weight=20")
    model.save_weights(tmp_path / "w.safetensors")
    old = {k.replace("alignment.skeleton.", "alignment."): v for k, v in load_file(tmp_path / "w.safetensors").items()
           if "queue" not in k}  # those checkpoints predate the key queue
    save_file(old, tmp_path / "old.safetensors")  # the single-module key layout of earlier checkpoints
    other = _model("model.align_weight=20", "train.seed=1")
    other.load_weights(tmp_path / "old.safetensors")
    head = "context_head.0.weight"
    assert torch.equal(other.alignment["skeleton"].get_parameter(head), model.alignment["skeleton"].get_parameter(head))


def test_example_batch_rejects_bad_presence():
    model = _model()
    with pytest.raises(ValueError, match="unknown modality"):
        model.example_batch(2, present={"audio": [True, True]})
    with pytest.raises(ValueError, match="2 entries"):
        model.example_batch(2, present={"video": [True]})


def test_slot_statistics_remove_what_only_encodes_the_slot():
    """target_norm=slot: a per-slot constant is centred away, sample differences are kept at unit scale."""
    from oskar_ray.model.oskar import SlotStatistics

    torch.manual_seed(0)
    slots, dim, batch = 6, 8, 64
    stats = SlotStatistics(slots, dim, momentum=0.5)
    slot_part = torch.randn(slots, dim) * 5
    slot_of_target = torch.arange(slots).repeat(batch, 1)  # every slot is a target of every sample
    for _ in range(40):
        sample_part = torch.randn(batch, 1, dim) * 0.3
        normed = stats(slot_part[None] + sample_part, slot_of_target, update=True)
    assert torch.allclose(stats.mean, slot_part + 0.0, atol=0.15)
    assert normed.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=0.15)
    centred = normed - normed.mean(0, keepdim=True)
    assert torch.allclose(normed.mean(0), torch.zeros(slots, dim), atol=0.4)
    assert centred.std().item() > 0.5
    frozen = stats.mean.clone()
    stats(slot_part[None] + sample_part, slot_of_target, update=False)
    assert torch.equal(stats.mean, frozen)


def test_slot_target_norm_trains_and_round_trips(tmp_path):
    model = _model("model.target_norm=slot")
    batch = model.example_batch(8)
    model(batch)["loss"].backward()
    assert (model.target_stats.mean != 0).any()
    model.save_weights(tmp_path / "w.safetensors")
    other = _model("model.target_norm=slot")
    other.load_weights(tmp_path / "w.safetensors")
    assert torch.equal(other.target_stats.mean, model.target_stats.mean)
    with pytest.raises(ValueError, match="model.target_norm"):
        _model("model.target_norm=batch")


def test_variance_covariance_terms_penalise_collapsed_and_correlated_features():
    from oskar_ray.model.variance_covariance import variance_covariance_terms

    torch.manual_seed(0)
    ids = torch.zeros(64, 5, dtype=torch.long)
    collapsed = torch.ones(64, 5, 16) + 1e-4 * torch.randn(64, 5, 16)
    spread = 5.0 * torch.randn(64, 5, 16)  # pooled over 5 tokens: std ≈ 2.2
    correlated = 5.0 * torch.randn(64, 5, 1).expand(64, 5, 16)  # same scale, one direction
    assert variance_covariance_terms(collapsed, ids, 1)["var"] > 0.95
    assert variance_covariance_terms(spread, ids, 1)["var"] < 0.05
    assert variance_covariance_terms(correlated, ids, 1)["cov"] > 20 * variance_covariance_terms(spread, ids, 1)["cov"]
    # a modality carried by fewer than two samples contributes nothing
    one = torch.zeros(64, 5, dtype=torch.long)
    one[0] = 1
    assert variance_covariance_terms(spread, one, 2)["var"] == variance_covariance_terms(spread[1:], one[1:], 1)["var"]


def test_variance_covariance_weights_add_to_the_loss_and_reach_the_encoder():
    model = _model("model.var_weight=1.0", "model.cov_weight=0.04")
    out = model(model.example_batch(6))
    assert {"reg/var", "reg/cov"} <= set(out) and float(out["reg/var"]) > 0
    out["loss"].backward()
    assert model.fusion_encoder.transformer.norm.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.var_weight must be >= 0"):
        _model("model.var_weight=-1")


def test_same_seed_gives_bit_identical_gradients_with_several_threads():
    """Two same-seed runs must not drift apart: an order-dependent accumulation in the backward
    (advanced indexing of the slot embeddings) once made them differ by 1e-7 per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            model = _model()
            model(model.example_batch(16))["loss"].backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    differing = [n for g in grads[1:] for n in g if not torch.equal(g[n], grads[0][n])]
    assert not differing, f"gradients differ between same-seed runs: {sorted(set(differing))[:5]}"


def test_bf16_cpu_attention_matches_the_fused_kernel_and_keeps_padding_rows_finite():
    from oskar_ray.model.blocks import attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16, generator=gen) for _ in range(3))
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 7:] = False
    for attn_mask in (None, mask):
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        plain = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask)
        assert plain.dtype == torch.bfloat16
        assert torch.allclose(plain.float(), reference, atol=0.05), (plain.float() - reference).abs().max()
    nothing_visible = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    assert torch.isfinite(attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), nothing_visible)).all()
