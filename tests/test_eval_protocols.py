"""Each evaluation protocol on inputs whose right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from oskar_ray.data.language import Fact, stated_facts
from oskar_ray.eval.facts import ClipFacts, fact_metrics, oracle_features
from oskar_ray.eval.localization import (
    mean_average_precision,
    nms,
    segments_from_scores,
    timestep_labels,
)
from oskar_ray.eval.retrieval import ranks, retrieval_metrics, train_heads
from oskar_ray.eval.vqa import multiple_choice_accuracy, option_sets, per_type_accuracy
from oskar_ray.probes.heads import (
    attentive_probe,
    confusion_matrix,
    knn_probe,
    linear_probe,
    standardize,
    topk_accuracy,
)
from oskar_ray.probes.health import features_health, rankme

N_CLASSES = 5


def one_hot_features(n: int, dim: int = 16, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    feats = torch.randn(n, dim, generator=g) * noise
    feats[torch.arange(n), labels] += 1.0
    return feats, labels


def random_features(n: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def splits(make):
    return [make(n, seed=s) for n, s in ((200, 0), (100, 1), (300, 2))]


def test_the_linear_heads_trained_together_are_each_the_fit_it_would_be_alone():
    """fit_linear trains its (LR, weight decay) grid in one batched loop: each head must match plain Adam on
    that head alone, from the same seeded init, to float rounding."""
    import torch.nn.functional as F

    from oskar_ray.probes.heads import LINEAR_STEPS, _fit_linear_heads

    x, y = random_features(120, dim=24)
    settings = [(1e-3, 1e-4), (1e-2, 1e-1), (1e-1, 1e-3)]
    together = _fit_linear_heads(x, y, N_CLASSES, settings, seed=7)
    for (lr, decay), head in zip(settings, together, strict=True):
        torch.manual_seed(7)
        alone = torch.nn.Linear(24, N_CLASSES)
        opt = torch.optim.Adam(alone.parameters(), lr=lr, weight_decay=decay)
        for _ in range(LINEAR_STEPS):
            opt.zero_grad()
            F.cross_entropy(alone(x), y).backward()
            opt.step()
        assert torch.allclose(head.weight, alone.weight, atol=1e-5) and torch.allclose(head.bias, alone.bias, atol=1e-5)
    assert not torch.allclose(together[0].weight, together[1].weight)  # the heads did not share their steps


def test_the_linear_probe_trains_its_heads_in_groups_under_a_memory_budget_to_the_same_result(monkeypatch):
    from oskar_ray.probes import heads

    (x, y), (xv, yv) = random_features(90, dim=12), random_features(40, dim=12, seed=1)
    together = heads.fit_linear(x, y, xv, yv, N_CLASSES, seed=3)
    monkeypatch.setattr(heads, "LINEAR_BATCH_ELEMENTS", 1)  # one head per group
    alone = heads.fit_linear(x, y, xv, yv, N_CLASSES, seed=3)
    assert (alone.lr, alone.weight_decay, alone.val_top1) == (together.lr, together.weight_decay, together.val_top1)
    assert torch.allclose(alone.head.weight, together.head.weight, atol=1e-5)


def test_topk_and_confusion():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 2, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 10) == 1.0  # k clipped to the class count
    matrix = confusion_matrix(logits, labels, 3)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_linear_probe_one_hot_is_perfect_and_random_is_chance():
    (xtr, ytr), (xva, yva), (xte, yte) = splits(one_hot_features)
    assert linear_probe(xtr, ytr, xva, yva, xte, yte, N_CLASSES).top1 > 0.98
    (xtr, ytr), (xva, yva), (xte, yte) = splits(random_features)
    res = linear_probe(xtr, ytr, xva, yva, xte, yte, N_CLASSES)
    assert res.top1 < 0.35  # chance = 0.2
    assert res.logits.shape == (300, N_CLASSES)


def test_knn_one_hot_is_perfect_and_random_is_chance():
    (xtr, ytr), _, (xte, yte) = splits(one_hot_features)
    assert knn_probe(xtr, ytr, xte, yte, N_CLASSES, k=20).top1 > 0.98
    (xtr, ytr), _, (xte, yte) = splits(random_features)
    assert knn_probe(xtr, ytr, xte, yte, N_CLASSES, k=20).top1 < 0.35


def test_probe_rejects_mismatched_rows():
    x, y = one_hot_features(10)
    with pytest.raises(ValueError, match="train: 10 feature rows but 9 labels"):
        linear_probe(x, y[:9], x, y, x, y, N_CLASSES)


def token_set(n: int, seed: int, informative: bool = True):
    """8 noise tokens per sample; one of them (random position) carries the class one-hot."""
    g = torch.Generator().manual_seed(seed)
    feats, labels = one_hot_features(n, seed=seed) if informative else random_features(n, seed=seed)
    tokens = torch.randn(n, 8, 16, generator=g) * 0.3
    where = torch.randint(0, 8, (n,), generator=g)
    tokens[torch.arange(n), where] = feats * 3
    valid = torch.ones(n, 8, dtype=torch.bool)
    return tokens, valid, labels


def test_attentive_probe_finds_the_informative_token():
    train, val, test = token_set(200, 0), token_set(100, 1), token_set(200, 2)
    assert attentive_probe(train, val, test, N_CLASSES, epochs=20).top1 > 0.9
    train, val, test = (token_set(n, s, informative=False) for n, s in ((200, 0), (100, 1), (200, 2)))
    assert attentive_probe(train, val, test, N_CLASSES, epochs=5).top1 < 0.35


def test_attentive_probe_ignores_invalid_tokens():
    tokens, valid, labels = token_set(64, 0)
    valid[:, 4:] = False
    noisy = tokens.clone()
    noisy[:, 4:] = 1e3  # padding garbage must not change the prediction
    from oskar_ray.probes.heads import AttentiveHead

    head = AttentiveHead(16, N_CLASSES).eval()
    with torch.no_grad():
        assert torch.allclose(head(tokens, valid), head(noisy, valid), atol=1e-5)


def test_retrieval_identity_is_perfect_and_ties_are_not():
    metrics = retrieval_metrics(torch.eye(20))
    assert metrics["t2v/R1"] == 100.0 and metrics["v2t/R1"] == 100.0
    assert metrics["t2v/medR"] == 1.0
    assert ranks(torch.ones(5, 5)).tolist() == [5] * 5  # a collapsed encoder is last, not first


def test_retrieval_heads_on_identical_features():
    feats, _ = random_features(64, dim=32)
    heads, val_score = train_heads(feats, feats, feats, feats, steps=100)
    with torch.no_grad():
        metrics = retrieval_metrics(heads.similarity(feats, feats))
    assert metrics["t2v/R1"] == 100.0 and metrics["v2t/R1"] == 100.0 and val_score == 100.0
    shuffled = retrieval_metrics(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))
    assert shuffled["t2v/R1"] < 15.0


ACTIONS, COLOURS, REPS = [f"a{i}" for i in range(13)], [f"c{i}" for i in range(12)], [1, 2, 3]


def _fact_split(n: int, seed: int) -> ClipFacts:
    """Clips and first captions like the built-in benchmark's: one in four captions omits the count."""
    rng = np.random.default_rng(seed)
    clips = [(ACTIONS[i % 13], COLOURS[rng.integers(12)], REPS[rng.integers(3)]) for i in range(n)]
    return ClipFacts(clips, [(a, c, r if rng.random() < 0.75 else None) for a, c, r in clips])


def _oracle(facts: ClipFacts, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy one-hot facts, each side through its own random rotation (features need not share axes)."""
    g = torch.Generator().manual_seed(seed)
    video = oracle_features(facts.clips, [ACTIONS, COLOURS, REPS])
    text = oracle_features(facts.captions, [ACTIONS, COLOURS, REPS])
    rotate = [torch.linalg.qr(torch.randn(28, 28, generator=torch.Generator().manual_seed(k)))[0] for k in (1, 2)]
    noisy = [x + 0.05 * torch.randn(x.shape, generator=g) for x in (video, text)]
    return noisy[0] @ rotate[0], noisy[1] @ rotate[1]


def test_retrieval_protocol_reads_oracle_facts_near_the_ceiling_and_fails_on_misaligned_rows():
    """The sanity baseline: perfect features reach the duplicate-caption ceiling; shuffled pairs reach chance."""
    splits = {name: _fact_split(n, seed) for name, n, seed in (("train", 500, 0), ("val", 200, 1), ("test", 200, 2))}
    feats = {name: _oracle(f, seed) for seed, (name, f) in enumerate(splits.items())}
    standard = dict(zip(feats, zip(standardize(*(v for v, _ in feats.values())),
                                   standardize(*(t for _, t in feats.values())), strict=True), strict=True))
    heads, _ = train_heads(*standard["train"], *standard["val"])
    with torch.no_grad():
        sim = heads.similarity(*standard["test"])
    metrics = {**retrieval_metrics(sim), **fact_metrics(sim, splits["test"])}
    assert 60 < metrics["t2v/R1_ceiling"] < 85
    assert metrics["t2v/R1"] > metrics["t2v/R1_ceiling"] - 10 and metrics["t2v/fact_R1"] > 95
    assert metrics["v2t/R1"] > metrics["v2t/R1_ceiling"] - 10 and metrics["v2t/fact_R1"] > 95
    video, text = standard["train"]
    misaligned, _ = train_heads(video, text[torch.randperm(len(text), generator=torch.Generator().manual_seed(0))],
                                *standard["val"])
    with torch.no_grad():
        assert retrieval_metrics(misaligned.similarity(*standard["test"]))["t2v/R1"] < 5


def _identity_alignment(dim: int):
    from oskar_ray.model.align import CrossModalAlignment

    align = CrossModalAlignment(dim, temperature=0.1)
    with torch.no_grad():
        for linear in (align.context_head[0], align.context_head[2], align.target_head):
            linear.weight.copy_(torch.eye(dim)), linear.bias.zero_()
    align.context_head[1] = torch.nn.Identity()
    return align


def test_zero_shot_retrieval_prepares_captions_as_pretraining_did_and_fails_on_misaligned_rows():
    """Through identity heads, a video encoder that outputs exactly what the contrast was trained to match (the
    caption's layer-normed features, standardised with train moments) retrieves every clip; shuffled rows do not."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from oskar_ray.eval.features import Features
    from oskar_ray.eval.retrieval import TEXT_VIEW, ZERO_SHOT_VIDEO, zero_shot_similarity

    g = torch.Generator().manual_seed(0)
    captions = {s: torch.randn(n, 16, generator=g) * 3 + 5 for s, n in (("train", 300), ("test", 60))}
    normed = {s: F.layer_norm(c, (16,)) for s, c in captions.items()}
    mean, std = normed["train"].mean(0), normed["train"].std(0)
    goal = (normed["test"] - mean) / std

    def ctx_with(video):
        pooled = {("train", TEXT_VIEW): captions["train"], ("test", TEXT_VIEW): captions["test"],
                  ("test", ZERO_SHOT_VIDEO): video}
        cache = SimpleNamespace(get=lambda split, view: Features(pooled[split, view], torch.zeros(0), torch.zeros(0)),
                                views=[TEXT_VIEW, ZERO_SHOT_VIDEO])
        return SimpleNamespace(model=SimpleNamespace(alignment={"text": _identity_alignment(16)}), cache=cache,
                               cfg=SimpleNamespace(model=SimpleNamespace(align_from="video")))

    assert retrieval_metrics(zero_shot_similarity(ctx_with(goal)))["t2v/R1"] > 95
    shuffled = goal[torch.randperm(60, generator=g)]
    assert retrieval_metrics(zero_shot_similarity(ctx_with(shuffled)))["t2v/R1"] < 10
    plain = ctx_with(goal)
    plain.model.alignment = {}  # no video -> caption term in pretraining: no zero-shot readout
    assert zero_shot_similarity(plain) is None


def test_stated_facts_follow_the_caption_text():
    fact = Fact("wave_left", "red", 3)
    assert stated_facts("thrice, a person in a red shirt is waving the left hand", fact) == ("wave_left", "red", 3)
    assert stated_facts("the figure in red waves the left hand", fact) == ("wave_left", "red", None)
    assert stated_facts("someone wearing red kicks twice", Fact("kick_left", "red", 2))[2] == 2


def _truth():
    return {0: {0: [(0.1, 0.4)], 1: [(0.5, 0.8)]}, 1: {0: [(0.6, 0.9)]}}


def test_localization_map_perfect_and_shifted():
    truth = _truth()
    perfect = {c: [(k, s, e, 0.9) for k, segs in t.items() for s, e in segs] for c, t in truth.items()}
    assert mean_average_precision(perfect, truth) == {0.3: 1.0, 0.5: 1.0, 0.7: 1.0}
    shifted = {c: [(k, s + 0.1, e + 0.1, 0.9) for k, segs in t.items() for s, e in segs] for c, t in truth.items()}
    maps = mean_average_precision(shifted, truth)  # tIoU of a 0.3 segment shifted by 0.1 = 0.5
    assert maps[0.3] == 1.0 and maps[0.7] == 0.0
    wrong_class = {1 - c: d for c, d in perfect.items()}
    assert mean_average_precision(wrong_class, truth)[0.5] == 0.0
    with pytest.raises(ValueError, match="no ground-truth"):
        mean_average_precision(perfect, {})


def test_segments_from_scores_recovers_a_block():
    times = (np.arange(16) + 0.5) / 16
    scores = np.where((times > 0.25) & (times < 0.5), 0.95, 0.02)
    segs = segments_from_scores(scores, times, half_width=0.5 / 16)
    assert len(segs) == 1
    start, end, score = segs[0]
    assert start == pytest.approx(0.25) and end == pytest.approx(0.5) and score == pytest.approx(0.95)
    assert len(nms([(0.1, 0.4, 0.9), (0.12, 0.4, 0.8), (0.6, 0.7, 0.5)])) == 2


def test_timestep_labels():
    times = np.array([0.05, 0.25, 0.45, 0.65])
    assert timestep_labels(times, [(0.2, 0.5)], [3], background=9).tolist() == [9, 3, 3, 9]


def test_rankme_identity_and_rank_one():
    assert rankme(torch.eye(32)) == pytest.approx(32, rel=1e-3)
    rank_one = torch.randn(100, 1) @ torch.randn(1, 32)
    assert rankme(rank_one) == pytest.approx(1.0, abs=0.05)
    out = features_health({"video": torch.eye(8), "tiny": torch.ones(1, 8)})
    assert set(out) == {"video/rankme", "video/std"}


def test_vqa_multiple_choice_and_per_type():
    answers = torch.tensor([0, 1, 2, 3])
    types = torch.tensor([0, 0, 1, 1])
    options = option_sets(answers, types, n_answers=4, n_types=2)
    assert options.tolist() == [[True, True, False, False], [False, False, True, True]]
    logits = torch.tensor([[0.0, -1.0, 5.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [9.0, 0, 0, 1.0]])
    assert multiple_choice_accuracy(logits, answers, types, options) == 1.0  # options rescue rows 0 and 3
    per_type = per_type_accuracy(logits, answers, types, ["action", "colour"])
    assert per_type == {"type/action/accuracy": 0.5, "type/colour/accuracy": 0.5}


def test_pooling_matches_model_encode(smoke_cfg):
    from oskar_ray.eval.features import encode_view
    from oskar_ray.model import Oskar

    model = Oskar(smoke_cfg).eval()
    batch = model.example_batch(4, present={"skeleton": [True, False, True, True]})
    pooled, tokens, valid = encode_view(model, batch, "fusion:video+skeleton")
    assert torch.allclose(pooled, model.encode(batch, ["video", "skeleton"], encoder="fusion"), atol=1e-5)
    assert tokens.shape[:2] == valid.shape
    with pytest.raises(ValueError, match="must look like"):
        encode_view(model, batch, "video")


def test_video_only_baseline_keeps_feasible_budgets_and_repairs_a_whole_video_input():
    from oskar_ray.config import load_config
    from oskar_ray.eval.baselines import video_only_config
    from oskar_ray.model import Oskar

    tiny = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    kept = video_only_config(load_config(tiny))
    assert (kept.modalities["video"].mask_ratio, kept.budget.input_tokens) == (0.5, 64)
    assert kept.enabled_modalities == ["video"]
    # the whole video in, skeleton out: video alone must hide the 32 target tokens of its 128
    whole = load_config(tiny, ["modalities.video.mask_ratio=0", "budget.input_tokens=128",
                               "budget.input_weights={video: 1, skeleton: 0, text: 0}",
                               "budget.target_weights={video: 0, skeleton: 1, text: 0}",
                               "ema.modality_start={video: 0.9, skeleton: 0.999}"])
    repaired = video_only_config(whole)
    assert (repaired.modalities["video"].mask_ratio, repaired.budget.input_tokens) == (0.25, 96)
    # a fast video EMA suits video as an input only; here video is the target, so it gets the global start
    assert repaired.ema.modality_start == {"skeleton": 0.999} and whole.ema.modality_start["video"] == 0.9
    model = Oskar(repaired)
    out = model(model.example_batch(4))
    assert torch.isfinite(out["loss"]) and int(out["n_target_tokens"][0]) == 32


def _qa_rows(n_clips: int, seed: int, shuffle: bool = False):
    """(tokens, valid, question, answer) rows: each clip's 8 tokens carry its facts in noise; the question
    (one-hot type + noise) asks for action, colour or count, whose answer ids do not overlap."""
    g = torch.Generator().manual_seed(seed)
    splits = _fact_split(n_clips, seed)
    facts = oracle_features(splits.clips, [ACTIONS, COLOURS, REPS])  # (n, 28)
    answers = torch.stack([facts[:, :13].argmax(1), 13 + facts[:, 13:25].argmax(1), 25 + facts[:, 25:].argmax(1)], 1)
    tokens = facts[:, None] + 0.3 * torch.randn(n_clips, 8, 28, generator=g)
    kinds = torch.arange(3).repeat(n_clips)
    question = torch.eye(3)[kinds] + 0.1 * torch.randn(3 * n_clips, 3, generator=g)
    clip = torch.arange(n_clips).repeat_interleave(3)
    answer = answers[clip, kinds]
    if shuffle:
        answer = answer[torch.randperm(len(answer), generator=g)]
    return tokens[clip], torch.ones(3 * n_clips, 8, dtype=torch.bool), question, answer, kinds


def test_vqa_head_reads_the_asked_fact_from_oracle_tokens_and_fails_on_misaligned_rows():
    from oskar_ray.eval.vqa import QuestionConditionedHead, per_type_accuracy
    from oskar_ray.probes.heads import predict_attentive, select_head

    train, val, test = (_qa_rows(n, seed) for n, seed in ((300, 0), (100, 1), (100, 2)))

    def make():
        return QuestionConditionedHead(28, 3, 28)

    head, _ = select_head(make, train[:4], val[:4], epochs=30, lrs=(3e-3,))
    logits = predict_attentive(head, *test[:3])
    per_type = per_type_accuracy(logits, test[3], test[4], ["action", "colour", "count"])
    assert min(per_type.values()) > 0.9, per_type
    shuffled = _qa_rows(300, 0, shuffle=True)
    head, _ = select_head(make, shuffled[:4], val[:4], epochs=30, lrs=(3e-3,))
    assert topk_accuracy(predict_attentive(head, *test[:3]), test[3], 1) < 0.4


def test_vqa_priors_answer_each_type_with_its_most_frequent_train_answer():
    from oskar_ray.eval.vqa import type_priors

    train_answers, train_types = torch.tensor([0, 0, 1, 5, 5, 6]), torch.tensor([0, 0, 0, 1, 1, 1])
    priors = type_priors(train_answers, train_types, torch.tensor([0, 1, 5, 5]), torch.tensor([0, 0, 1, 1]),
                         ["action", "colour"])
    assert priors == {"type/action/prior": 0.5, "type/colour/prior": 1.0, "prior": 0.75}
