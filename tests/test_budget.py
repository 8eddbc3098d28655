"""Token budgets: exact counts, disjointness, caps, exclusivity, Dirichlet behaviour."""

import numpy as np
import pytest

from oskar_ray.config import load_config
from oskar_ray.model.budget import Layout, TokenBudgetSampler, build_modalities

SMOKE = "experiments/configs/smoke.yaml"


def _available(cfg, present: dict[str, np.ndarray], rng) -> tuple[dict, Layout]:
    mods = build_modalities(cfg)
    batch_size = len(next(iter(present.values())))
    avail = {}
    for name, modality in mods.items():
        mask = np.repeat(present[name][:, None], modality.num_tokens, axis=1)
        if name == "text":  # variable caption lengths
            lengths = rng.integers(1, modality.num_tokens + 1, batch_size)
            mask &= np.arange(modality.num_tokens)[None] < lengths[:, None]
        avail[name] = mask
    return avail, Layout(tuple(mods), tuple(m.num_tokens for m in mods.values()))


def _draw(overrides, present, seed=0):
    cfg = load_config(SMOKE, overrides)
    rng = np.random.default_rng(seed)
    avail, layout = _available(cfg, present, rng)
    return cfg, layout, TokenBudgetSampler(cfg).sample(avail, layout, rng)


def _check(draw, cfg):
    b = cfg.budget
    assert (draw.inputs.sum(1) == b.input_tokens).all()
    assert (draw.targets.sum(1) == b.target_tokens).all()
    assert not (draw.inputs & draw.targets).any()
    assert not ((draw.inputs | draw.targets) & ~draw.available).any()


def test_exact_counts_over_many_configs_and_presence_patterns():
    rng = np.random.default_rng(0)
    for trial in range(40):  # every sample keeps video or skeleton: >= 100 tokens
        overrides = [
            f"budget.input_tokens={rng.integers(8, 64)}",
            f"budget.target_tokens={rng.integers(4, 36)}",
            f"budget.input_alpha={rng.choice([0.1, 0.5, 1.0, 5.0])}",
            f"budget.target_alpha={rng.choice([0.1, 0.5, 1.0, 5.0])}",
            f"budget.exclusive={bool(rng.integers(0, 2))}",
            f"budget.cross_modal_share={rng.choice([0.0, 0.5, 1.0])}",
            f"modalities.video.masking={rng.choice(['random', 'tube', 'block'])}",
            f"modalities.skeleton.masking={rng.choice(['random', 'segments'])}",
            f"modalities.video.mask_ratio={rng.choice([0.3, 0.5, 0.9])}",
        ]
        video = rng.random(48) < 0.6
        present = {"video": video, "skeleton": ~video | (rng.random(48) < 0.5), "text": rng.random(48) < 0.7}
        cfg, _, draw = _draw(overrides, present, seed=trial)
        _check(draw, cfg)


def test_inputs_visible_and_targets_masked_when_capacity_allows():
    present = {m: np.ones(64, bool) for m in ("video", "skeleton", "text")}
    _, _, draw = _draw([], present)
    assert not (draw.inputs & draw.masked).any()
    assert not (draw.targets & ~draw.masked).any()


def test_missing_modality_share_goes_to_the_others():
    present = {"video": np.zeros(32, bool), "skeleton": np.ones(32, bool), "text": np.zeros(32, bool)}
    cfg, layout, draw = _draw([], present)
    _check(draw, cfg)
    skeleton = slice(layout.offsets[1], layout.offsets[2])
    assert draw.inputs[:, skeleton].sum(1).tolist() == [64] * 32  # beyond the 50 visible: spills
    assert draw.targets[:, skeleton].sum(1).tolist() == [32] * 32


def test_per_modality_caps_respected():
    # text has at most 24 tokens: a huge share can never take more than it has
    present = {m: np.ones(256, bool) for m in ("video", "skeleton", "text")}
    cfg, layout, draw = _draw(["budget.input_alpha=0.05"], present)
    text = slice(layout.offsets[2], layout.offsets[3])
    assert (draw.inputs[:, text].sum(1) <= draw.available[:, text].sum(1)).all()
    assert (draw.inputs[:, text].sum(1) == (draw.available[:, text] & ~draw.masked[:, text]).sum(1)).any()


def test_exclusivity_blocks_target_time_in_other_modalities():
    present = {m: np.ones(128, bool) for m in ("video", "skeleton", "text")}
    cfg, layout, draw = _draw(["budget.exclusive=true", "budget.input_tokens=32"], present)
    sampler = TokenBudgetSampler(cfg)
    cover = np.concatenate([sampler._cover[n] for n in layout.names])
    modality = layout.modality_of_token
    violations = 0
    for b in range(128):
        for m in range(2):  # video, skeleton have time; text has none
            target_bins = cover[draw.targets[b] & (modality == m)].any(0)
            other_inputs = draw.inputs[b] & (modality != m)
            violations += int((cover[other_inputs] & target_bins).any())
    assert violations == 0
    _check(draw, cfg)


def _modality_shares(draw, layout, which):
    chosen = getattr(draw, which)
    return np.stack([chosen[:, layout.offsets[m]:layout.offsets[m + 1]].sum(1)
                     for m in range(len(layout.names))], 1) / chosen.sum(1, keepdims=True)


def test_larger_alpha_gives_more_even_split():
    present = {"video": np.ones(2000, bool), "skeleton": np.ones(2000, bool), "text": np.zeros(2000, bool)}
    spread = {}
    for alpha in (0.2, 20.0):
        _, layout, draw = _draw([f"budget.target_alpha={alpha}"], present)
        shares = _modality_shares(draw, layout, "targets")[:, :2]
        spread[alpha] = np.abs(shares[:, 0] - 0.5).mean()
    assert spread[20.0] < 0.5 * spread[0.2]


def test_input_and_target_allotments_are_independent():
    present = {"video": np.ones(4000, bool), "skeleton": np.ones(4000, bool), "text": np.zeros(4000, bool)}
    _, layout, draw = _draw(["budget.input_alpha=0.3", "budget.target_alpha=0.3"], present)
    video_in = _modality_shares(draw, layout, "inputs")[:, 0]
    video_tgt = _modality_shares(draw, layout, "targets")[:, 0]
    assert abs(np.corrcoef(video_in, video_tgt)[0, 1]) < 0.1
    # many samples predict one modality mostly from the other
    assert ((video_in > 0.8) & (video_tgt < 0.2)).mean() > 0.05


def test_cross_modal_share_routes_targets_away_from_inputs():
    present = {"video": np.ones(4000, bool), "skeleton": np.ones(4000, bool), "text": np.zeros(4000, bool)}
    _, layout, draw = _draw(["budget.cross_modal_share=1.0", "budget.input_alpha=0.3"], present)
    video_in = _modality_shares(draw, layout, "inputs")[:, 0]
    video_tgt = _modality_shares(draw, layout, "targets")[:, 0]
    assert np.corrcoef(video_in, video_tgt)[0, 1] < -0.3


def test_seeded_draws_repeat():
    present = {m: np.ones(16, bool) for m in ("video", "skeleton", "text")}
    _, _, a = _draw([], present, seed=3)
    _, _, b = _draw([], present, seed=3)
    _, _, c = _draw([], present, seed=4)
    assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()
    assert (a.inputs != c.inputs).any()


def test_sample_too_small_for_budget_names_the_sample():
    present = {"video": np.array([True, False]), "skeleton": np.array([True, False]), "text": np.ones(2, bool)}
    with pytest.raises(ValueError, match="sample 1 .*text.*input_tokens"):
        _draw([], present)


def test_sample_batch_gives_sorted_global_indices():
    cfg = load_config(SMOKE)
    sampler = TokenBudgetSampler(cfg)
    batch = {"video": np.zeros((4, 16, 3, 32, 32), np.float32), "skeleton": np.zeros((4, 16, 25, 3)),
             "present_video": np.ones(4, bool)}
    out = sampler.sample_batch(batch, np.random.default_rng(0))  # no text key: two modalities
    assert out["input_index"].shape == (4, 64) and out["target_index"].shape == (4, 32)
    assert out["input_index"].max() < 128 + 100
    assert (np.diff(out["input_index"], axis=1) > 0).all()


def test_modality_weights_route_inputs_and_targets():
    """The video -> skeleton routing of docs/design.md: inputs only from video, targets only from skeleton."""
    n = 200
    present = {"video": np.ones(n, bool), "skeleton": np.ones(n, bool), "text": np.ones(n, bool)}
    present["video"][:10] = False  # no video: inputs fall back to what the sample has
    routing = ["budget.input_weights={video: 1, skeleton: 0, text: 0}",
               "budget.target_weights={video: 0, skeleton: 1, text: 0}"]
    cfg, layout, draw = _draw(routing, present)
    _check(draw, cfg)
    inputs, targets = _modality_shares(draw, layout, "inputs"), _modality_shares(draw, layout, "targets")
    assert (inputs[10:, 0] == 1.0).all() and (targets[:, 1] == 1.0).all()
    assert (inputs[:10, 0] == 0.0).all()


def test_modality_weights_validated():
    with pytest.raises(ValueError, match="budget.input_weights.audio"):
        load_config(SMOKE, ["budget.input_weights={audio: 1}"])
    with pytest.raises(ValueError, match="budget.target_weights.video"):
        load_config(SMOKE, ["budget.target_weights={video: -1}"])
    with pytest.raises(ValueError, match="every enabled modality has weight 0"):
        load_config(SMOKE, ["budget.input_weights={video: 0, skeleton: 0, text: 0}"])
