"""What the EMA target encoders cost per step: only what something reads is encoded, and the target path that
normalises just the target tokens gives the targets the dense (every token) path gave (issue 29, point 5)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oskar_ray.config import load_config
from oskar_ray.model import Oskar
from oskar_ray.model.budget import batch_layout
from oskar_ray.model.slot_statistics import SlotStatistics

SMOKE = "experiments/configs/smoke.yaml"
TINY = "experiments/configs/tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


def _dense_slot_statistics(stats, normed, slot_rows, target_index, update):
    """SlotStatistics as it was: over every token of the batch ``(B, N, D)``, the targets picked by a mask."""
    if update:
        is_target = torch.zeros(normed.shape[:2]).scatter_(1, target_index, 1.0)
        count = is_target.sum(0)
        keep = 1.0 - (1.0 - stats.momentum) * (count > 0).float()
        mean = (is_target[..., None] * normed).sum(0) / count.clamp(min=1)[:, None]
        stats.mean[slot_rows] = keep[:, None] * stats.mean[slot_rows] + (1 - keep[:, None]) * mean
        residual = (normed - stats.mean[slot_rows]).pow(2).mean(-1)
        rms = ((is_target * residual).sum(0) / count.clamp(min=1)).sqrt().clamp(min=0.1)
        keep = torch.where(count > 1, keep, torch.ones_like(keep))
        stats.scale[slot_rows] = keep * stats.scale[slot_rows] + (1 - keep) * rms
    return (normed - stats.mean[slot_rows]) / stats.scale[slot_rows, None]


class DenseTargets(Oskar):
    """The target path as it was: every token's features in one ``(B, N, D)`` tensor, normalised whole."""

    def _targets(self, batch, layout, target_index, target_modality, every_row=()):
        dim, offsets = self.cfg.model.dim, layout.offsets
        full = torch.zeros(target_index.shape[0], int(offsets[-1]), dim)
        for m, name in enumerate(layout.names):
            rows = ((target_modality == m).any(1) | (name in every_row)).nonzero().squeeze(1)
            if rows.numel():
                sub = {k: batch[k][rows] for k in self.modalities[name].batch_keys}
                full[rows, offsets[m]:offsets[m + 1]] = self._target_features(sub, name).float()
        normed = F.layer_norm(full, (dim,))
        if self.cfg.model.target_norm == "slot":
            normed = _dense_slot_statistics(self.target_stats, normed, self._slot_positions(layout), target_index,
                                            self.training)
        aligned = {n: full[:, offsets[k]:offsets[k + 1]] for k, n in enumerate(layout.names) if n in every_row}
        return torch.gather(normed, 1, target_index[..., None].expand(-1, -1, dim)), aligned


def _pair(config, *overrides):
    cfg = load_config(config, list(overrides))
    torch.manual_seed(0)
    new = Oskar(cfg)
    old = DenseTargets(cfg)
    old.load_state_dict(new.state_dict())
    batch = new.example_batch(8, present={"text": [True] * 6 + [False] * 2})
    batch.update(new.sampler.sample_batch(batch, np.random.default_rng(0)))  # the same draw for both
    return new, old, batch


@pytest.mark.parametrize("config, overrides", [(TINY, ["model.align_queue=8"]), (SMOKE, ["model.target_norm=slot"])])
def test_losses_gradients_and_statistics_match_the_dense_target_path(config, overrides):
    new, old, batch = _pair(config, *overrides)
    outs = []
    for model in (new, old):
        out = model(batch)
        out["loss"].backward()
        outs.append(out)
    assert outs[0].keys() == outs[1].keys()
    for key, value in outs[1].items():  # the statistics' sums differ only in float summation order
        assert torch.allclose(outs[0][key], value, rtol=1e-5, atol=1e-6), key
    for (name, p), q in zip(new.named_parameters(), old.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    for (name, mine), theirs in zip(new.named_buffers(), old.buffers(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6), name  # slot statistics, alignment key queues


def test_in_eval_the_targets_and_aligned_features_are_bit_identical():
    new, old, batch = _pair(TINY)
    new.train(False)
    old.train(False)
    layout = batch_layout(new.modalities, batch)
    _, target_index = new._indices(batch, layout)
    args = (batch, layout, target_index, new._modality_ids(layout, target_index), new._alignment_targets(layout))
    with torch.no_grad():
        (targets, aligned), (dense, dense_aligned) = new._targets(*args), old._targets(*args)
    assert torch.equal(targets, dense)
    assert aligned.keys() == dense_aligned.keys() == {"skeleton", "text"}
    assert torch.equal(aligned["skeleton"], dense_aligned["skeleton"])
    # the two clips without a caption are no longer encoded (nothing read them: no targets, out of the contrast)
    assert torch.equal(aligned["text"][:6], dense_aligned["text"][:6]) and not aligned["text"][6:].any()


def test_slot_statistics_on_the_targets_alone_match_the_dense_update():
    """Repeated slots, slots one sample predicts (no spread yet) and slots nobody predicts (kept)."""
    torch.manual_seed(0)
    tokens, dim, extra = 10, 4, 3  # the statistics also hold 3 slots of a modality not in the batch
    sparse, dense = SlotStatistics(tokens + extra, dim, 0.7), SlotStatistics(tokens + extra, dim, 0.7)
    slot_rows = torch.arange(extra, extra + tokens)
    # tokens 0-5 are predicted by several samples, 6-8 by one, 9 by none
    target_index = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 3, 5], [0, 2, 4, 6], [1, 3, 5, 7], [0, 1, 2, 8]])
    for _ in range(3):
        normed = torch.randn(len(target_index), tokens, dim)
        got = sparse(torch.gather(normed, 1, target_index[..., None].expand(-1, -1, dim)),
                     slot_rows[target_index], update=True)
        want = _dense_slot_statistics(dense, normed, slot_rows, target_index, update=True)
        assert torch.allclose(got, torch.gather(want, 1, target_index[..., None].expand(-1, -1, dim)), atol=1e-6)
    assert torch.allclose(sparse.mean, dense.mean, atol=1e-6) and torch.allclose(sparse.scale, dense.scale)
    untouched = [*range(extra), extra + 9]
    assert torch.equal(sparse.mean[untouched], torch.zeros(4, dim)) and (sparse.scale[untouched] == 1).all()
    assert (sparse.scale[extra + 6:extra + 9] == 1).all() and (sparse.mean[extra + 6:extra + 9] != 0).all()


def _encoded_rows(model: Oskar) -> dict[str, int]:
    """Record, per modality, how many rows its target encoder is run on."""
    calls: dict[str, int] = {}
    encode = model._target_features

    def spy(batch, name):
        calls[name] = calls.get(name, 0) + len(batch[model.modalities[name].batch_keys[0]])
        return encode(batch, name)

    model._target_features = spy
    return calls


def test_a_modality_nothing_reads_is_not_encoded():
    # tiny: video only goes in (target weight 0, not aligned); skeleton and captions feed a contrast: every row
    # (or the clips without a caption: they have no caption targets and drop out of the contrast)
    torch.manual_seed(0)
    tiny = Oskar(load_config(TINY, []))
    calls = _encoded_rows(tiny)
    tiny(tiny.example_batch(8, present={"text": [True] * 5 + [False] * 3}))
    assert calls == {"skeleton": 8, "text": 5}
    # smoke without caption targets: captions are not encoded, the others only for the rows with targets in them
    torch.manual_seed(0)
    smoke = Oskar(load_config(SMOKE, ["budget.target_weights={text: 0}", "budget.target_alpha=0.05"]))
    batch = smoke.example_batch(16)
    batch.update(smoke.sampler.sample_batch(batch, np.random.default_rng(0)))
    layout = batch_layout(smoke.modalities, batch)
    modality = smoke._modality_ids(layout, torch.as_tensor(batch["target_index"]))
    expected = {n: int((modality == m).any(1).sum()) for m, n in enumerate(layout.names) if (modality == m).any()}
    calls = _encoded_rows(smoke)
    smoke(batch)
    assert calls == expected and "text" not in calls
    assert min(calls.values()) < 16  # the draw left some rows without targets in a modality: not encoded


def test_bench_compares_sets_the_recipe_trains_on_and_tiny_compute_barely_grows():
    spec = importlib.util.spec_from_file_location("bench_budget", REPO / "experiments" / "bench_budget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = load_config(TINY, ["train.batch_size=4"])
    reason = bench.why_not(tiny, ("video",))
    assert "128 tokens < 128 in + 32 out" in reason and "no target" in reason
    assert bench.why_not(tiny, ("video", "skeleton")) is None
    assert bench.why_not(load_config(SMOKE, []), ("video",)) is None
    (two, two_targets), (three, three_targets) = (bench.step_flops(tiny, names, torch.device("cpu"))
                                                  for names in bench.MODALITY_SETS[1:])
    assert three / two < 1.1  # captions add their own small target encoder pass, nothing else grows
    assert 0 < two_targets < three_targets < 0.25 * three
