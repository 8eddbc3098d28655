"""Fine-tuning and the supervised baseline (oskar_ray/eval/finetune.py): a protocol that never loses to the probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from oskar_ray.config import load_config
from oskar_ray.eval.finetune import FineTuned, FinetuneRecipe, _carve, _predict, finetune

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory) -> Path:
    """~400 labelled clips (about 100 train, 40 val, 40 test): enough test clips for a one-point margin."""
    from oskar_ray.data.synth import SynthSpec, generate

    out = tmp_path_factory.mktemp("finetune") / "ds"
    generate(SynthSpec(samples=400, pretrain_samples=8, seed=5, workers=1, untrimmed_frames=32), out, progress=False)
    return out


@pytest.fixture(scope="module")
def context(labelled_set):
    """An EvalContext on a random-init smoke model: its skeleton and fusion features already separate the actions."""
    from oskar_ray.eval.api import _context
    from oskar_ray.eval.baselines import scratch_model

    cfg = load_config(SMOKE, [f"data.path={labelled_set}", "eval.finetune_epochs=2", "eval.finetune_min_steps=12",
                              "eval.finetune_max_steps=12", "eval.batch_size=64"])
    views = ["target:skeleton", "fusion:video+skeleton"]
    return _context(scratch_model(cfg, 0), cfg, str(labelled_set), 0, False, None, views)


def test_fine_tuning_scores_at_least_the_frozen_linear_probe_where_that_probe_is_high(context):
    from oskar_ray.eval.action import protocol_results

    before = {k: v.clone() for k, v in context.model.state_dict().items()}
    for view in ("target:skeleton", "fusion:video+skeleton"):
        res = protocol_results(context, view, ("linear", "finetune"))
        assert res["linear"].top1 >= 0.8, f"{view}: the frozen probe must be high for this test to mean anything"
        assert res["finetune"].top1 >= res["linear"].top1 - 0.01, view
        assert res["finetune"].stop_split == "carve" and 0 <= res["finetune"].best_step <= res["finetune"].steps_run
    after = context.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the pretrained model is never modified


def test_a_fine_tune_that_never_gains_on_the_carve_is_exactly_the_frozen_linear_probe(context):
    from oskar_ray.eval.action import frozen_probes

    e = context.cfg.eval
    lr, e.finetune_lr = e.finetune_lr, 1e-12  # no step can move the carve's score: step 0 is kept
    try:
        res = finetune(context.model, context.cache, "target:skeleton", context.cfg, train_split="train",
                       n_classes=len(context.vocab("actions")), progress=False)
    finally:
        e.finetune_lr = lr
    linear = frozen_probes(context, "target:skeleton", protocols=("linear",))["linear"]
    assert res.best_step == 0 and res.n_fit == int((context.cache.get("train", "target:skeleton")
                                                    .labels["action"] >= 0).sum())
    assert res.top1 == linear.top1
    torch.testing.assert_close(res.logits, linear.logits, atol=2e-3, rtol=1e-3)


def test_at_step_zero_the_fine_tuned_network_is_the_linear_probe_of_its_fit_part(context):
    from oskar_ray.probes.heads import fit_linear

    view = "target:skeleton"
    fit, _, _ = _carve(context.cache, view, "train", context.cfg.eval, 0)
    train, val = context.cache.get("train", view), context.cache.get("val", view)
    probe = fit_linear(train.pooled[fit], train.labels["action"][fit], val.pooled, val.labels["action"],
                       len(context.vocab("actions")), 0)
    net = FineTuned(context.model, view, probe.head, probe.mean, probe.std)
    logits, labels = _predict(net, context.cache, context.cfg, context.cache.plan.source("val"), torch.device("cpu"))
    assert torch.equal(labels, val.labels["action"])
    # the same features through the network's own copy of the encoder: the probe's logits, to float precision
    torch.testing.assert_close(logits, probe(val.pooled), atol=2e-3, rtol=1e-3)


def test_the_supervised_protocol_trains_a_random_init_network_on_the_same_schedule(context):
    from oskar_ray.eval.action import protocol_results

    res = protocol_results(context, "target:skeleton", ("supervised",), "train_10pct")["supervised"]
    assert context.scratch[0] is not context.model and res.steps_run >= 1
    # one clip per class at 10 % of ~100 training clips: nothing to carve, val decides (and the run says so)
    assert res.stop_split == "val" and res.n_fit == len(np.unique(context.cache.get("train_10pct", "target:skeleton")
                                                                      .labels["action"]))


def test_a_fit_set_just_over_one_batch_still_gets_every_step_of_its_schedule(context):
    from oskar_ray.eval.finetune import _optimise
    from oskar_ray.probes.heads import fit_linear

    view = "target:skeleton"
    feats, source = context.cache.get("train", view), context.cache.plan.source("train")
    rows = np.arange(len(feats))[:15]  # 15 clips at batch 8: one full batch an epoch, 7 dropped
    probe = fit_linear(feats.pooled[rows], feats.labels["action"][rows], feats.pooled, feats.labels["action"],
                       len(context.vocab("actions")), 0)
    net = FineTuned(context.model, view, probe.head, probe.mean, probe.std)
    recipe = FinetuneRecipe(steps=7, batch_size=8, lr=1e-4, layer_decay=1.0, warmup_steps=1, weight_decay=0.0,
                            eval_every=7, patience=1)
    opt = torch.optim.AdamW(net.param_groups(1e-4, 1.0))
    fit = type(source)(source.stored, rows if source.rows is None else source.rows[rows], "")
    assert _optimise(net, opt, recipe, context.cache, context.cfg, fit, 0, False, "") == 7


def test_the_schedule_is_sized_by_the_labels_with_warm_up_then_cosine(context, monkeypatch):
    e = context.cfg.eval
    for key, value in (("finetune_min_steps", 50), ("finetune_max_steps", 400), ("finetune_epochs", 10)):
        monkeypatch.setattr(e, key, value)
    small, large = FinetuneRecipe.sized(e, 10), FinetuneRecipe.sized(e, 448)
    assert (small.steps, small.batch_size) == (50, 10)  # ten clips: 10 epochs = 10 steps, raised to the floor
    assert (large.steps, large.batch_size) == (140, 32)  # 10 passes over 448 clips at batch 32
    assert large.warmup_steps == 14 and large.eval_every == 14
    lrs = [large.lr_at(s) for s in range(large.steps)]
    assert lrs[0] < lrs[13] <= 1.0 and max(lrs) == pytest.approx(1.0, abs=1e-3) and lrs[-1] < 0.01
    assert FinetuneRecipe.sized(e, 448, from_scratch=True).layer_decay == 1.0 and large.layer_decay < 1.0


def test_layer_wise_decay_covers_every_parameter_once_and_decays_downwards(context):
    from oskar_ray.probes.heads import fit_linear

    feats = context.cache.get("train", "target:skeleton")
    probe = fit_linear(feats.pooled, feats.labels["action"], feats.pooled, feats.labels["action"],
                       len(context.vocab("actions")), 0)
    net = FineTuned(context.model, "target:skeleton", probe.head, probe.mean, probe.std)
    groups = net.param_groups(1e-3, 0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    head, norm, tokenizers, *blocks = (g["lr"] for g in groups)
    assert head == 1e-3 and norm == 5e-4 and blocks == sorted(blocks) and tokenizers < blocks[0] < blocks[-1] < head


def test_the_early_stopping_carve_is_stratified_and_disjoint_from_the_fit_part(context):
    view = "target:skeleton"
    fit, stop, split = _carve(context.cache, view, "train", context.cfg.eval, 0)
    labels = context.cache.get("train", view).labels["action"].numpy()
    assert split == "carve" and not set(fit) & set(stop)
    assert set(labels[fit]) == set(labels[labels >= 0])  # no class loses its last fit clip
    counts = np.bincount(labels[labels >= 0])
    assert set(labels[stop]) == {c for c in range(len(counts)) if counts[c] >= 2}


def test_a_carve_too_small_to_show_a_gain_leaves_the_decision_to_val(context, monkeypatch):
    monkeypatch.setattr(context.cfg.eval, "finetune_min_gain", 100)  # no carve of ~100 clips holds 200
    fit, stop, split = _carve(context.cache, "target:skeleton", "train", context.cfg.eval, 0)
    assert split == "val" and stop.stored == context.cache.plan.source("val").stored
    assert len(fit) == int((context.cache.get("train", "target:skeleton").labels["action"] >= 0).sum())


def test_a_split_without_action_labels_is_refused_naming_it(context, monkeypatch):
    import oskar_ray.eval.context as ctx_module

    monkeypatch.setattr(ctx_module, "stored_labels", lambda dataset, split: np.full(5, -1))
    with pytest.raises(ValueError, match=r"needs action labels, but split 'train'"):
        context.require_labels("train", "lowshot")


def test_the_label_efficiency_figure_draws_perfect_scores_and_a_broken_figure_keeps_the_metrics(tmp_path,
                                                                                                  monkeypatch):
    import oskar_ray.eval.artifacts as artifacts
    from oskar_ray.eval.intervals import wilson

    curve = {"skeleton": {p: [(pct, 1.0, *wilson(1.0, 40)) for pct in (1.0, 10.0, 100.0)]
                          for p in ("linear", "supervised")}}
    paths = artifacts.write_artifacts({"eval/lowshot/skeleton/linear/1pct/top1": 1.0}, {"lowshot": {"curve": curve}},
                                      tmp_path / "a")
    assert [p.name for p in paths] == ["summary.json", "lowshot.png"]
    monkeypatch.setattr(artifacts, "_label_efficiency", lambda data, path: 1 / 0)
    paths = artifacts.write_artifacts({"eval/x/top1": 0.5}, {"lowshot": {"curve": curve}}, tmp_path / "b")
    assert [p.name for p in paths] == ["summary.json"] and "eval/x/top1" in (tmp_path / "b/summary.json").read_text()
