"""The report with 95 % intervals and the label-efficiency figure (issue 30): a real SQLite MLflow store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_store import (
    BASE_PARAMS,
    GRID,
    GRID_KEYS,
    TOP1,
    lowshot_scores,
    make_sweep,
    new_store,
    parse_table,
    score,
)

from oskar_ray.eval.intervals import wilson
from oskar_ray.report import build_report


# --- 95 % intervals (issue 30, point 4) -----------------------------------------------------------------------
def test_an_interval_end_is_never_a_metric_of_its_own():
    from oskar_ray.metric_names import headline_metrics, interval_keys, is_interval

    for key in (TOP1, "eval/retrieval/v2t/medR", "eval/lowshot/video/linear/10pct/top1"):
        assert all(is_interval(k) for k in interval_keys(key)) and not is_interval(key)
    keys = [TOP1, "eval/retrieval/t2v/R1", "eval/vqa/accuracy"]
    with_ends = keys + [k for key in keys for k in interval_keys(key)]
    assert headline_metrics(with_ends) == headline_metrics(keys)  # an interval end never stands for a task


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return new_store(tmp_path_factory)


def test_intervals_show_beside_their_metric_and_name_the_trials_within_noise_of_the_best(store, tmp_path):
    uri, _ = store
    # top-1 of the grid: 32x16 0.0336, 32x32 0.0352, 64x16 0.0656, 64x32 0.0672 (best); +- 0.005 overlaps 64x16 only
    parent, ids = make_sweep(store, "noisy", GRID, GRID_KEYS, half_widths={TOP1: 0.005, "eval/retrieval/t2v/R1": 2})
    page = build_report("noisy", tmp_path, tracking_uri=uri, parent_run_id=parent)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names and not any("ci95" in n for n in names)  # (a) no figure of an interval end
    assert "label_efficiency.png" not in names  # no run has low-shot metrics
    parser = parse_table(page)
    assert not any("ci95" in h for h in parser.headers)  # (a) no column of its own
    primary = parser.headers.index("action/video/linear/top1")
    assert parser.headers[primary + 1] == "within noise of best"
    table = parser.table()
    for run_id, top1 in zip(ids, (0.0336, 0.0352, 0.0656, 0.0672), strict=True):
        text, value = table[run_id]["action/video/linear/top1"]
        assert float(value) == pytest.approx(top1)  # data-v: the value, what the sort reads
        assert text == f"{top1:.4g} [{top1 - 0.005:.3g}, {top1 + 0.005:.3g}]"
        assert table[run_id]["vqa/accuracy"][0] == f"{top1 / 2:.4g}"  # no interval logged: the value alone
        low, high = (float(x) for x in table[run_id]["retrieval/t2v/R1"][0].split(" ", 1)[1].strip("[]").split(", "))
        assert (low, high) == pytest.approx((100 * top1 - 2, 100 * top1 + 2), abs=0.006)
    assert [table[i]["within noise of best"][0] for i in ids] == ["no", "no", "yes", "best"]
    text = page.read_text(encoding="utf-8")
    assert "Within noise of the best</b>: 1 other trial(s)" in text
    assert "<code>input_tokens=64, target_tokens=16</code>" in text.split("Within noise of the best", 1)[1]
    frame = pd.read_csv(tmp_path / "trials.csv")
    assert frame.set_index("run_id").loc[ids, "within_noise_of_best"].tolist() == ["no", "no", "yes", "best"]
    # heatmap cells of one trial carry its interval (rows input_tokens 32, 64; columns target_tokens 16, 32)
    from oskar_ray.report.runs import load_sweep
    from oskar_ray.report.sweep_plots import _cell_intervals

    low, high = _cell_intervals(load_sweep("noisy", uri, parent), TOP1, GRID_KEYS)
    top1 = np.array([[0.0336, 0.0352], [0.0656, 0.0672]])
    np.testing.assert_allclose(low, top1 - 0.005)
    np.testing.assert_allclose(high, top1 + 0.005)


def test_a_ranking_metric_without_intervals_gets_no_noise_column_and_says_so(store, tmp_path):
    uri, _ = store
    parent, _ = make_sweep(store, "nointerval", GRID[:2], GRID_KEYS)
    page = build_report("nointerval", tmp_path, tracking_uri=uri, parent_run_id=parent)
    assert "within noise of best" not in parse_table(page).headers
    assert "has no 95 % interval logged for the best trial" in page.read_text(encoding="utf-8")


def test_metric_plots_draw_each_trials_interval_as_a_bar():
    from oskar_ray.report.figures import new_figure
    from oskar_ray.report.sweep_plots import _draw_1d

    x = pd.Series([32.0, 64.0, 128.0])
    y = pd.Series([0.3, 0.4, 0.5])
    low, high = pd.Series([0.25, 0.33, np.nan]), pd.Series([0.36, 0.48, np.nan])
    for numeric in (True, False):
        _, (ax,) = new_figure(1)
        _draw_1d(ax, x if numeric else x.astype(str), y, numeric, (low, high))
        bars = [c for c in ax.collections if c.get_label() == "trial's 95 % interval"]
        assert len(bars) == 1
        segments = [seg.tolist() for seg in bars[0].get_segments()]
        where = [32.0, 64.0] if numeric else [0.0, 1.0]  # categorical: bar positions
        assert segments == [[[where[0], 0.25], [where[0], 0.36]], [[where[1], 0.33], [where[1], 0.48]]]


def test_label_efficiency_figure_of_the_best_trial(store, tmp_path):
    from oskar_ray.report.figures import new_figure
    from oskar_ray.report.lowshot_plot import _panel, lowshot_metrics
    from oskar_ray.report.runs import load_sweep

    uri, _ = store
    parent, ids = make_sweep(store, "lowshot", GRID, GRID_KEYS, lowshot=True)
    page = build_report("lowshot", tmp_path, tracking_uri=uri, parent_run_id=parent)
    figures = {p.name for p in tmp_path.glob("*.png")}
    assert "label_efficiency.png" in figures and not any("lowshot" in f for f in figures)  # one figure, not 9
    text = page.read_text(encoding="utf-8")
    assert "Label efficiency" in text and "label efficiency of input_tokens=64, target_tokens=32" in text
    headers = parse_table(page).headers
    assert "lowshot/video/linear/10pct/top1" in headers and not any("ci95" in h for h in headers)

    sweep = load_sweep("lowshot", uri, parent)
    found = lowshot_metrics(sweep.metric_keys("eval/"))
    assert found["eval/lowshot/video/finetune/10pct/top1"] == ("video", "finetune", 10.0)
    assert lowshot_metrics(["eval/lowshot/1pct/video/linear/top1"]) == {  # the older spelling
        "eval/lowshot/1pct/video/linear/top1": ("video", "linear", 1.0)}
    assert not any("ci95" in k for k in found) and len(found) == 9
    best = sweep.frame.index[sweep.frame["run_id"] == ids[3]][0]
    _, (ax,) = new_figure(1)
    _panel(ax, sweep, best, "video", found)
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"linear", "finetune"}
    assert len({line.get_color() for line in lines.values()}) == 2  # each protocol its own colour
    expected = lowshot_scores(score({**BASE_PARAMS, **GRID[3]}))
    for protocol, line in lines.items():
        assert line.get_xdata().tolist() == [1.0, 10.0, 100.0]
        assert line.get_ydata().tolist() == pytest.approx(
            [expected[f"eval/lowshot/video/{protocol}/{p}pct/top1"] for p in (1, 10, 100)])
    drawn = sorted(tuple(seg.ravel()) for c in ax.collections for seg in c.get_segments())
    bars = sorted((p, wilson(v, 200)[0], p, wilson(v, 200)[1]) for protocol in ("linear", "finetune")
                  for p in (1, 10, 100) for v in [expected[f"eval/lowshot/video/{protocol}/{p}pct/top1"]])
    np.testing.assert_allclose(drawn, bars)  # one 95 % bar per point, from the logged interval ends


def test_a_failing_label_efficiency_figure_is_a_note_not_a_lost_report(store, tmp_path, monkeypatch):
    from oskar_ray.report import build

    def broken(*args):
        raise RuntimeError("no axes today")

    monkeypatch.setattr(build, "label_efficiency_plot", broken)
    uri, _ = store
    parent, ids = make_sweep(store, "lowshot-broken", GRID[:2], GRID_KEYS, lowshot=True)
    page = build_report("lowshot-broken", tmp_path, tracking_uri=uri, parent_run_id=parent)
    assert "label-efficiency figure could not be drawn: RuntimeError: no axes today" in page.read_text(encoding="utf-8")
    assert set(parse_table(page).table()) == set(ids)
