"""The clip-level cross-modal contrast (model/align.py) inside the Oskar model: matched pairs, the queue of past
targets, what trains, which clips take part, and the zero-shot view eval reads."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oskar_ray.config import load_config
from oskar_ray.model import Oskar
from oskar_ray.model.budget import batch_layout

SMOKE = "experiments/configs/smoke.yaml"


def _model(*overrides):
    torch.manual_seed(0)
    return Oskar(load_config(SMOKE, list(overrides)))


def test_alignment_picks_out_matched_pairs_and_drops_clips_missing_a_side():
    from oskar_ray.model.align import CrossModalAlignment

    torch.manual_seed(0)
    align = CrossModalAlignment(16, temperature=0.1)
    with torch.no_grad():  # identity heads: the loss then reads the features themselves
        align.context_head[0].weight.copy_(torch.eye(16)), align.context_head[0].bias.zero_()
        align.context_head[2].weight.copy_(torch.eye(16)), align.context_head[2].bias.zero_()
        align.target_head.weight.copy_(torch.eye(16)), align.target_head.bias.zero_()
        align.context_head[1] = torch.nn.Identity()
    clips = torch.randn(8, 16)
    everyone = torch.ones(8, dtype=torch.bool)
    with torch.no_grad():
        matched = align(clips * 3, clips, everyone)
        shuffled = align(clips[torch.randperm(8)], clips, everyone)
    assert float(matched) < 0.1 < float(shuffled)  # own clip found vs. ~ln(8)
    # a clip without source tokens or without the target modality drops out; fewer than two clips: no term
    assert align(clips, clips, torch.zeros(8, dtype=torch.bool)) is None
    one = torch.zeros(8, dtype=torch.bool)
    one[0] = True
    assert align(clips, clips, one) is None


def test_alignment_queue_keeps_past_targets_as_extra_negatives_and_survives_a_checkpoint(tmp_path):
    from oskar_ray.model.align import CrossModalAlignment

    torch.manual_seed(0)
    plain, queued = CrossModalAlignment(16, 0.1), CrossModalAlignment(16, 0.1, queue=10)
    heads = {k: v for k, v in plain.state_dict().items() if "queue" not in k}
    queued.load_state_dict(heads, strict=False)  # same heads, so only the negatives differ
    first, second = torch.randn(4, 16), torch.randn(4, 16)
    everyone = torch.ones(4, dtype=torch.bool)
    queued(first, first, everyone)
    assert int(queued.queue_filled) == 4 and torch.allclose(queued.queue[:4], F.layer_norm(first, (16,)))
    with torch.no_grad():  # four more keys to tell the clip from: a harder term than the batch alone
        assert float(queued(second, second, everyone)) > float(plain(second, second, everyone))
    for _ in range(2):
        queued(second, second, everyone)
    assert int(queued.queue_filled) == 10 and int(queued.queue_next) == 6  # a ring: the oldest keys go first
    queued.eval()
    queued(first, first, everyone)
    assert int(queued.queue_next) == 6  # evaluation reads the queue, never fills it
    video_in = ("model.align_weight=1", "model.align_queue=8", "budget.input_weights={video: 1, skeleton: 0, text: 0}")
    model = _model(*video_in)
    model.train()
    model(model.example_batch(6))
    assert int(model.alignment["skeleton"].queue_filled) == 6
    model(model.example_batch(6))["loss"].backward()  # the queued keys reach the loss, and it still trains
    assert model.alignment["skeleton"].target_head.weight.grad.abs().sum() > 0
    model.save_weights(tmp_path / "w.safetensors")
    resumed = _model(*video_in)
    resumed.load_weights(tmp_path / "w.safetensors")
    assert torch.equal(resumed.alignment["skeleton"].queue, model.alignment["skeleton"].queue)
    from safetensors.torch import load_file, save_file

    resumed.save_weights(tmp_path / "now.safetensors")
    before = {k: v for k, v in load_file(tmp_path / "now.safetensors").items() if "queue" not in k}
    save_file(before, tmp_path / "before.safetensors")  # as written before the queue existed
    fresh = _model(*video_in)
    fresh.load_weights(tmp_path / "before.safetensors")  # loads; ...
    assert int(fresh.alignment["skeleton"].queue_filled) == 0  # ... and the queue starts empty
    with pytest.raises(ValueError, match="align_queue must be >= 0"):
        _model("model.align_weight=1", "model.align_queue=-1")


def test_alignment_weight_adds_the_term_and_trains_only_the_context_side():
    model = _model("model.align_weight=1.0", "model.align_from=video", "model.align_to=skeleton",
                   "budget.input_weights={video: 1, skeleton: 0, text: 1}")
    out = model(model.example_batch(6))
    assert "loss/align" in out and float(out["loss/align"]) > 0
    assert torch.equal(out["loss/align"], out["loss/align/skeleton"])
    out["loss"].backward()
    assert model.alignment["skeleton"].context_head[0].weight.grad.abs().sum() > 0
    assert model.fusion_encoder.tokenizers["video"].proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_encoders["skeleton"].parameters())
    assert "loss/align" not in _model()(model.example_batch(6))  # off by default
    with pytest.raises(ValueError, match="model.align_to must be an enabled modality"):
        _model("model.align_weight=1", "model.align_to=audio")
    with pytest.raises(ValueError, match="both hold 'video'"):
        _model("model.align_weight=1", "model.align_to=video")
    with pytest.raises(ValueError, match="align_temperature must be positive"):
        _model("model.align_weight=1", "model.align_temperature=0")


def test_alignment_leaves_out_clips_whose_context_sees_the_target_modality():
    """A clip with skeleton tokens among its inputs could answer video -> skeleton by attending to them."""
    model = _model("model.align_weight=1.0", "model.align_to=skeleton,text", "model.align_weights={text: 2}")
    assert set(model.alignment) == {"skeleton", "text"}
    batch = model.example_batch(6)
    layout = batch_layout(model.modalities, batch)
    video_only = {**batch, **model.sampler.sample_batch(batch, np.random.default_rng(0))}
    size = layout.sizes[0]
    video_only["input_index"] = torch.arange(64).repeat(6, 1)  # video tokens only
    video_only["target_index"] = torch.arange(size, size + 32).repeat(6, 1)
    out = model(video_only)
    assert {"loss/align/skeleton", "loss/align/text"} <= set(out)
    skeleton_in = {**video_only, "input_index": torch.cat([torch.arange(60), torch.arange(size, size + 4)])
                   .repeat(6, 1), "target_index": torch.arange(size + 4, size + 36).repeat(6, 1)}
    out = model(skeleton_in)
    assert "loss/align/skeleton" not in out and "loss/align/text" in out
    with pytest.raises(ValueError, match="align_weights.audio"):
        _model("model.align_weight=1", "model.align_weights={audio: 1}")


def test_zero_shot_video_view_is_the_context_the_caption_contrast_trains_on():
    """eval/retrieval.py reads the pretrained video -> caption heads zero-shot from the fusion encoder over the
    video tokens alone: in the recipe that is exactly the pooled context of every clip the caption term keeps."""
    torch.manual_seed(0)
    recipe = Path(SMOKE).parent / "tiny.yaml"
    model = Oskar(load_config(recipe, ["budget.input_weights={video: 1, skeleton: 0, text: 0}"]))
    seen = []
    original = model.alignment["text"].forward
    model.alignment["text"].forward = lambda source, target, rows: seen.append(source[rows]) or original(
        source, target, rows)
    batch = model.example_batch(4)
    model.train()
    model(batch)
    assert len(seen) == 1 and len(seen[0]) == 4  # every clip: none feeds caption tokens in
    assert torch.allclose(seen[0], model.encode(batch, ["video"], encoder="fusion"), atol=1e-5)
