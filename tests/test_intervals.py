"""95 % intervals of eval metrics: Wilson and the bootstrap, and the tasks that attach them (issue 30, point 4)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oskar_ray.eval.context import TaskResult
from oskar_ray.eval.features import Features
from oskar_ray.eval.intervals import bootstrap, interval_keys, is_interval, wilson
from oskar_ray.eval.localization import ResampledMAP, map_intervals, mean_average_precision
from oskar_ray.eval.retrieval import lower_median, ranks, retrieval_intervals, retrieval_metrics
from oskar_ray.eval.vqa import type_counts

SMOKE = Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"


# --- Wilson --------------------------------------------------------------------
def test_wilson_known_values_and_edges():
    assert wilson(0.335, 200) == pytest.approx((0.2733, 0.4030), abs=5e-4)  # the runbook's example
    z2 = 1.959964 ** 2
    assert wilson(0.0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # 0 / 10: the closed form of the upper end
    assert wilson(1.0, 10) == pytest.approx((10 / (10 + z2), 1.0))
    low, high = wilson(0.3, 50)
    assert (1 - high, 1 - low) == pytest.approx(wilson(0.7, 50))  # symmetric in p <-> 1 - p
    assert all(math.isnan(v) for v in (*wilson(0.5, 0), *wilson(float("nan"), 100)))
    widths = [np.subtract(*wilson(0.5, n)[::-1]) for n in (25, 100, 400)]
    assert widths[0] > widths[1] > widths[2] and widths[1] / widths[2] == pytest.approx(2, rel=0.02)  # ~ 1/sqrt(n)


def test_wilson_covers_the_true_proportion_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for p, n in ((0.3, 200), (0.05, 100)):
        draws = rng.binomial(n, p, size=4000) / n
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson(float(x), n) for x in draws)])
        assert 0.93 <= covered <= 0.975, (p, n, covered)


# --- bootstrap -----------------------------------------------------------------
def test_bootstrap_is_seeded_and_brackets_the_mean_with_the_normal_width():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    low, high = bootstrap(lambda idx: float(x[idx].mean()), len(x), seed=3)
    assert low < x.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * x.std() / math.sqrt(len(x)), rel=0.15)
    assert bootstrap(lambda idx: float(x[idx].mean()), len(x), seed=3) == (low, high)
    assert bootstrap(lambda idx: float(x[idx].mean()), len(x), seed=4) != (low, high)
    assert all(math.isnan(v) for v in bootstrap(lambda idx: 0.0, 0))
    assert all(math.isnan(v) for v in bootstrap(lambda idx: float("nan"), 10, reps=20))


def test_bootstrap_of_a_mean_covers_it_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    samples = rng.exponential(1.0, size=(150, 100))  # skewed: the percentile bootstrap still roughly holds
    covered = [lo <= 1.0 <= hi for lo, hi in
               (bootstrap(lambda idx, s=s: float(s[idx].mean()), len(s), seed=i, reps=300)
                for i, s in enumerate(samples))]
    assert 0.86 <= np.mean(covered) <= 0.99


def test_interval_names_and_task_result_add():
    lo_key, hi_key = interval_keys("eval/action/video/linear/top1")
    assert (lo_key, hi_key) == ("eval/action/video/linear/top1_ci95_lo", "eval/action/video/linear/top1_ci95_hi")
    assert is_interval(lo_key) and is_interval(hi_key) and not is_interval("eval/action/video/linear/top1")
    result = TaskResult()
    result.add("top1", 0.335, n=200)
    result.add("medR", 3.0, interval=(2, 5))
    result.add("prior", 0.2)
    assert result.metrics == {"top1": 0.335, "medR": 3.0, "prior": 0.2}
    assert result.intervals == {"top1": pytest.approx(wilson(0.335, 200)), "medR": (2.0, 5.0)}


# --- retrieval -------------------------------------------------------------------
def test_retrieval_intervals_wilson_for_recalls_bootstrap_for_the_median_rank():
    sim = torch.randn(150, 150, generator=torch.Generator().manual_seed(0)) + 1.5 * torch.eye(150)
    metrics = retrieval_metrics(sim)
    metrics.update({"t2v/fact_R1": 60.0, "t2v/R1_ceiling": 71.0})
    intervals = retrieval_intervals(sim, metrics, seed=0)
    expected = {f"{d}/{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "medR")} | {"t2v/fact_R1"}
    assert set(intervals) == expected  # the ceiling comes from the facts alone: no interval
    for key in expected - {"t2v/medR", "v2t/medR"}:
        low, high = intervals[key]
        assert 0 <= low <= metrics[key] <= high <= 100  # percentages, like the metric
        assert (low / 100, high / 100) == pytest.approx(wilson(metrics[key] / 100, 150))
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        r = ranks(matrix).numpy()
        low, high = intervals[f"{direction}/medR"]
        assert low <= metrics[f"{direction}/medR"] <= high and high > low
        assert low in r and high in r  # lower medians of resamples: ranks that occur
    assert retrieval_intervals(sim, metrics, seed=0) == intervals  # seeded
    perfect = retrieval_intervals(torch.eye(30), retrieval_metrics(torch.eye(30)))
    assert perfect["t2v/medR"] == (1.0, 1.0) and perfect["t2v/R1"][1] == pytest.approx(100)


def test_lower_median_reads_the_median_as_torch_does():
    for n in (1, 2, 7, 10):
        values = np.random.default_rng(n).integers(1, 50, size=n)
        assert lower_median(values) == float(torch.tensor(values).median())


# --- localization ------------------------------------------------------------------
def _localization_case(seed: int, n_videos: int = 30, n_classes: int = 6):
    rng = np.random.default_rng(seed)
    truth: dict = defaultdict(lambda: defaultdict(list))
    detections: dict = defaultdict(list)
    for video in range(n_videos):
        for slot in range(3):
            label, start = int(rng.integers(n_classes)), slot * 0.33 + rng.random() * 0.1
            truth[label][video].append((start, start + 0.2))
            for _ in range(2):  # mostly the right class, roughly the right place
                c = label if rng.random() < 0.7 else int(rng.integers(n_classes))
                jitter = 0.05 * rng.standard_normal(2)
                detections[c].append((video, start + jitter[0], start + 0.2 + jitter[1], rng.random()))
    return detections, truth


def test_resampled_map_equals_map_of_the_resampled_videos():
    detections, truth = _localization_case(0)
    statistic = ResampledMAP(detections, truth, 30)
    maps = mean_average_precision(detections, truth)
    same = statistic(np.arange(30))
    assert same == pytest.approx({**{f"mAP_{th}": v for th, v in maps.items()}, "mAP": np.mean(list(maps.values()))})
    indices = np.random.default_rng(1).integers(0, 30, 30)  # videos drawn twice, some not at all
    drawn_truth: dict = defaultdict(lambda: defaultdict(list))
    drawn: dict = defaultdict(list)
    for position, video in enumerate(indices):  # the resample written out: every drawn video under a new key
        for c, per_video in truth.items():
            drawn_truth[c][position] += per_video.get(video, [])
        for c, found in detections.items():
            drawn[c] += [(position, *d[1:]) for d in found if d[0] == video]
    expected = mean_average_precision(drawn, drawn_truth)
    assert statistic(indices) == pytest.approx({**{f"mAP_{th}": v for th, v in expected.items()},
                                                "mAP": np.mean(list(expected.values()))})


def test_map_intervals_score_each_resample_once_for_every_key():
    detections, truth = _localization_case(2)
    statistic = ResampledMAP(detections, truth, 30)
    calls = []

    def counted(indices):
        calls.append(1)
        return statistic(indices)

    keys = ["mAP_0.3", "mAP_0.5", "mAP_0.7", "mAP"]
    intervals = map_intervals(counted, keys, 30, seed=0, reps=200)
    assert len(calls) <= 200  # one scoring per resample, shared by the four keys
    point = statistic(np.arange(30))
    for key in keys:
        low, high = intervals[key]
        assert 0 <= low < high <= 1 and low <= point[key] <= high
    assert intervals["mAP_0.7"][0] < intervals["mAP_0.3"][0]  # a stricter tIoU scores lower
    assert map_intervals(statistic, keys, 30, seed=0, reps=200) == intervals


def test_localization_task_logs_intervals_for_every_map(synth_dir):
    """``run_localization`` on a random-init model: each ``mAP*`` has its bootstrap companions, via the API."""
    from oskar_ray.config import load_config
    from oskar_ray.eval import evaluate
    from oskar_ray.model import Oskar

    cfg = load_config(SMOKE, [f"data.path={synth_dir}", "eval.batch_size=32"])
    torch.manual_seed(0)
    metrics = evaluate(Oskar(cfg), synth_dir, ["localization"], cfg, log=False, progress=False)
    values = {k: v for k, v in metrics.items() if not is_interval(k)}
    assert {"eval/localization/mAP", "eval/localization/mAP_0.5", "eval/localization/skeleton/mAP"} <= set(values)
    for key in values:
        low, high = (metrics[k] for k in interval_keys(key))
        assert 0.0 <= low <= high <= 1.0, key
    assert set(metrics) == set(values) | {k for key in values for k in interval_keys(key)}


# --- accuracies (VQA, robustness) ----------------------------------------------------
def test_vqa_type_counts_are_what_each_per_type_accuracy_is_over():
    types = torch.tensor([0, 0, 2, 1, 0, 2])
    assert type_counts(types, ["action", "colour", "count", "side"]) == {
        "type/action/accuracy": 3, "type/colour/accuracy": 1, "type/count/accuracy": 2, "type/side/accuracy": 0}


def test_robustness_gives_every_setting_a_wilson_interval_over_its_test_clips():
    from oskar_ray.eval.robustness import run_robustness, settings

    gen = torch.Generator().manual_seed(0)
    n_classes, dim, n = 3, 8, {"train": 30, "val": 12, "test": 20}
    labels = {s: torch.arange(k) % n_classes for s, k in n.items()}

    def get(split: str, view: str) -> Features:
        k = n[split]
        tokens = torch.randn(k, 4, dim, generator=gen) + labels[split][:, None, None].float()
        return Features(tokens.mean(1), tokens, torch.ones(k, 4, dtype=torch.bool), {"action": labels[split]})

    ctx = SimpleNamespace(model=SimpleNamespace(modalities={"video": None, "skeleton": None}), seed=0,
                          progress=False, probe_epochs=1, vocab=lambda name: ["a", "b", "c"],
                          cache=SimpleNamespace(get=get))
    result = run_robustness(ctx)
    assert set(result.metrics) == {f"{s}/{p}/top1" for s in settings(("video", "skeleton"))
                                   for p in ("linear", "attentive")}
    assert set(result.intervals) == set(result.metrics)
    for key, value in result.metrics.items():
        assert result.intervals[key] == pytest.approx(wilson(value, 20))
