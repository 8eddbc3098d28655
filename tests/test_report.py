"""``oskar report``: a real SQLite MLflow store with sweep parents and trial runs → HTML + PNGs.

One store per module (creating a SQLite store costs seconds); each test uses its own experiment.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from oskar_ray.cli import main
from oskar_ray.eval.intervals import interval_keys, wilson
from oskar_ray.metric_names import PROBE_PREFIX
from oskar_ray.report import build_report
from oskar_ray.report.curves import pareto_front

TOP1 = "eval/action/video/linear/top1"
BASE_PARAMS = {"train.steps": "4", "tracking.experiment": "x", "model.dim": "64", "predictor.kind": "cross_attention",
               "budget.input_tokens": "64", "budget.target_tokens": "32", "ema.start": "0.996"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def score(params: dict[str, str]) -> float:
    """A made-up top-1 that depends on the swept values (so cells are distinguishable)."""
    kind_bonus = 0.05 if params.get("predictor.kind") == "self_attention" else 0.0
    return round(float(params["budget.input_tokens"]) / 1000 + float(params["budget.target_tokens"]) / 10000
                 + kind_bonus, 6)


def lowshot_scores(top1: float) -> dict[str, float]:
    """Made-up label-efficiency metrics (new naming) that grow with the share of labels."""
    return {f"eval/lowshot/{view}/{protocol}/{pct}pct/top1": round(top1 * (1 + pct / 100) * gain * boost * 5, 6)
            for view, gain in (("video", 1.0), ("skeleton", 0.8)) for protocol, boost in (("linear", 1.0),
                                                                                        ("finetune", 1.2))
            for pct in (1, 10, 100) if not (view == "skeleton" and protocol == "finetune")}


def log_trial(client, exp_id, parent_id, params, *, status="FINISHED", trial_id="t0", swept="", with_eval=True,
              half_widths: dict[str, float] | None = None, lowshot: bool = False):
    """One trial run; ``half_widths``: metric -> half width of the 95 % interval logged around it (the eval's
    ``_ci95_lo / _hi`` companions); ``lowshot``: label-efficiency metrics with Wilson intervals too."""
    tags = {"oskar.role": "trial", "oskar.trial_id": trial_id, "oskar.swept_params": swept, "oskar.sweep": "s"}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run_id = client.create_run(exp_id, run_name=f"trial-{trial_id}", tags=tags).info.run_id
    full = {**BASE_PARAMS, **params}
    now = int(time.time() * 1000)
    steps = 2 if status == "FAILED" else 5
    metrics = [Metric(key, value / (step + 1), now, step) for step in range(steps)
               for key, value in (("loss", 1.0), ("loss/video", 1.2), ("loss/skeleton", 0.8))]
    metrics += [Metric("health/video/rankme", 10.0 + step, now, step) for step in range(steps)]
    metrics += [Metric(f"{PROBE_PREFIX}fusion/knn_top1", 0.1 * step, now, step) for step in range(steps)]
    metrics += [Metric("flops_per_step", 1e9 * float(full["budget.input_tokens"]), now, 0)]
    if with_eval:
        top1 = score(full)
        values = {TOP1: top1, "eval/retrieval/t2v/R1": 100 * top1, "eval/vqa/accuracy": top1 / 2}
        intervals = {k: (values[k] - w, values[k] + w) for k, w in (half_widths or {}).items()}
        if lowshot:
            values.update(lowshot_scores(top1))
            intervals.update({k: wilson(v, 200) for k, v in lowshot_scores(top1).items()})
        metrics += [Metric(k, v, now, steps) for k, v in values.items()]
        metrics += [Metric(k, end, now, steps) for key, ends in intervals.items()
                    for k, end in zip(interval_keys(key), ends, strict=True)]
        metrics += [Metric("train_flops", 4e9 * float(full["budget.input_tokens"]), now, steps)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in full.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, status=status)
    return run_id


def make_sweep(store, experiment, grid: list[dict[str, str]], swept: list[str], failed: dict | None = None,
               **trial_options):
    """A parent run + one child per grid point (+ one FAILED child without eval metrics); ``trial_options``:
    :func:`log_trial`'s ``half_widths`` / ``lowshot`` for every trial."""
    _, client = store
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    swept_text = ",".join(swept)
    parent = client.create_run(exp_id, run_name="sweep", tags={"oskar.role": "sweep", "oskar.sweep": experiment,
                                                               "oskar.swept_params": swept_text}).info.run_id
    ids = [log_trial(client, exp_id, parent, p, trial_id=f"t{i}", swept=swept_text, **trial_options)
           for i, p in enumerate(grid)]
    if failed is not None:
        ids.append(log_trial(client, exp_id, parent, failed, status="FAILED", trial_id="tX", swept=swept_text,
                             with_eval=False))
    return parent, ids


class TableParser(HTMLParser):
    """Rows of ``table#trials``: headers, and per row its attributes and (text, data-v) cells."""

    def __init__(self):
        super().__init__()
        self.headers, self.rows, self._in_table, self._cell = [], [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "trials":
            self._in_table = True
        elif self._in_table and tag == "tr" and "data-run-id" in attrs:
            self.rows.append({"attrs": attrs, "cells": []})
        elif self._in_table and tag in ("th", "td"):
            self._cell = [tag, "", attrs.get("data-v")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif self._cell is not None and tag in ("th", "td"):
            kind, text, value = self._cell
            if kind == "th":
                self.headers.append(text)
            else:
                self.rows[-1]["cells"].append((text, value))
            self._cell = None

    def table(self) -> dict[str, dict[str, tuple[str, str | None]]]:
        """run id → header → (text, data-v)."""
        return {row["attrs"]["data-run-id"]: dict(zip(self.headers, row["cells"], strict=True)) for row in self.rows}


def parse_table(page: Path) -> TableParser:
    parser = TableParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


GRID = [{"budget.input_tokens": i, "budget.target_tokens": t} for i in ("32", "64") for t in ("16", "32")]
GRID_KEYS = ["budget.input_tokens", "budget.target_tokens"]


def test_grid_report_plots_table_and_failed_trial(store, tmp_path):
    uri, client = store
    parent, ids = make_sweep(store, "grid", GRID, GRID_KEYS, failed={"budget.input_tokens": "64",
                                                                     "budget.target_tokens": "64"})
    page = build_report("grid", tmp_path / "rep", tracking_uri=uri, parent_run_id=parent)
    assert page == tmp_path / "rep" / "report.html"
    names = {p.name for p in page.parent.glob("*.png")}
    assert {"heatmap_eval_action_video_linear_top1.png", "curves_loss.png", "curves_rankme.png", "curves_probe.png",
            "pareto_flops.png"} <= names
    text = page.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == len(names)  # every PNG embedded: opens without a server
    assert "http://" not in text and "https://" not in text and "<script src" not in text
    parser = parse_table(page)
    table = parser.table()
    assert set(table) == set(ids)
    for run_id in ids:
        run = client.get_run(run_id)
        row = table[run_id]
        assert row["status"][0] == run.info.status
        assert row["run name"][0] == run.info.run_name
        assert row["input_tokens"][0] == run.data.params["budget.input_tokens"]
        if run.info.status == "FINISHED":
            assert float(row["action/video/linear/top1"][1]) == pytest.approx(run.data.metrics[TOP1])
            assert float(row["retrieval/t2v/R1"][1]) == pytest.approx(run.data.metrics["eval/retrieval/t2v/R1"])
    failed = table[ids[-1]]
    assert failed["status"][0] == "FAILED" and failed["action/video/linear/top1"] == ("—", "")
    best = [r for r in parser.rows if r["attrs"].get("class") == "best"]
    assert [r["attrs"]["data-run-id"] for r in best] == [ids[3]]  # 64 x 32 scores highest
    assert (page.parent / "trials.csv").is_file()


def test_cli_uses_latest_sweep_and_parent_run(store, tmp_path, capsys):
    uri, _ = store
    first, first_ids = make_sweep(store, "twice", GRID[:2], GRID_KEYS)
    _, second_ids = make_sweep(store, "twice", GRID[2:], GRID_KEYS)
    out = tmp_path / "latest"
    assert main(["report", "--experiment", "twice", "--out", str(out), "--tracking-uri", uri]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert set(parse_table(out / "report.html").table()) == set(second_ids)
    out = tmp_path / "first"
    assert main(["report", "--experiment", "twice", "--out", str(out), "--tracking-uri", uri,
                 "--parent-run", first]) == 0
    assert set(parse_table(out / "report.html").table()) == set(first_ids)


def test_one_dimensional_sweep_is_a_line_plot(store, tmp_path):
    uri, _ = store
    grid = [{"budget.input_tokens": v} for v in ("32", "64", "128")]
    make_sweep(store, "oned", grid, ["budget.input_tokens"])
    page = build_report("oned", tmp_path, tracking_uri=uri)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert "metric_eval_action_video_linear_top1_vs_budget.input_tokens.png" in names
    assert not any(n.startswith("heatmap_") for n in names)
    assert len(parse_table(page).rows) == 3


def test_categorical_sweep_has_grouped_bars(store, tmp_path):
    uri, _ = store
    grid = [{"predictor.kind": k} for k in ("cross_attention", "self_attention", "self_attention")]
    _, ids = make_sweep(store, "cat", grid, ["predictor.kind"], half_widths={TOP1: 0.01})  # bars over the bars
    page = build_report("cat", tmp_path, tracking_uri=uri)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert "grouped_bars_predictor.kind.png" in names
    assert "metric_eval_vqa_accuracy_vs_predictor.kind.png" in names
    table = parse_table(page).table()
    assert [table[i]["predictor.kind"][0] for i in ids] == ["cross_attention", "self_attention", "self_attention"]


def test_plain_runs_without_sweep_parent_infer_varying_params(store, tmp_path):
    uri, client = store
    exp_id = client.create_experiment("plain")
    ids = [log_trial(client, exp_id, None, {"ema.start": v}, trial_id=v) for v in ("0.99", "0.996")]
    page = build_report("plain", tmp_path, tracking_uri=uri)
    text = page.read_text(encoding="utf-8")
    assert "no sweep parent run" in text
    assert "metric_eval_action_video_linear_top1_vs_ema.start.png" in {p.name for p in tmp_path.glob("*.png")}
    assert set(parse_table(page).table()) == set(ids)


def test_clear_errors(store, tmp_path, capsys):
    uri, client = store
    with pytest.raises(ValueError, match="experiment 'nope' not found in sqlite:///"):
        build_report("nope", tmp_path, tracking_uri=uri)
    client.create_experiment("empty")
    with pytest.raises(ValueError, match="no trial runs under experiment 'empty'"):
        build_report("empty", tmp_path, tracking_uri=uri)
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        build_report("x", tmp_path, tracking_uri=missing)
    assert not (tmp_path / "absent.db").exists()
    assert main(["report", "--experiment", "nope", "--out", str(tmp_path), "--tracking-uri", uri]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_pareto_front():
    flops = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    acc = np.array([0.5, 0.4, 0.6, 0.55, 0.7])
    assert pareto_front(flops, acc).tolist() == [True, False, True, False, True]
    assert pareto_front(flops, acc, maximize=False).tolist() == [True, True, False, False, False]


def test_unknown_parent_run_is_a_clear_error(store, tmp_path):
    uri, _ = store
    make_sweep(store, "parentless", GRID[:1], GRID_KEYS)
    with pytest.raises(ValueError, match="parent run 'deadbeef' not found .*'parentless' in sqlite:///"):
        build_report("parentless", tmp_path, tracking_uri=uri, parent_run_id="deadbeef")


def test_a_trial_the_scheduler_stopped_is_named_apart_from_finished_and_failed_ones():
    from oskar_ray.report.curves import _legend_labels
    from oskar_ray.report.runs import SweepRuns

    frame = pd.DataFrame({"run_id": ["a", "b", "c"], "status": ["FINISHED", "FINISHED", "FAILED"],
                          "label": ["x", "y", "z"], "tags.oskar.trial_status": ["completed", "early_stopped", None],
                          "tags.oskar.stopped_at_step": [None, "10", None]})
    sweep = SweepRuns("e", "uri", None, frame, [])
    assert sweep.outcome().tolist() == ["FINISHED", "stopped early", "FAILED"]
    assert _legend_labels(sweep) == [("x", True), ("y [stopped at 10]", False), ("z [FAILED]", False)]


def test_three_swept_keys_get_a_heatmap_per_task_and_pair_with_stopped_trials_filling_their_cells(store, tmp_path):
    from oskar_ray.report.runs import load_sweep
    from oskar_ray.report.sweep_plots import heatmap_table

    uri, client = store
    keys = [*GRID_KEYS, "ema.start"]
    grid = [{**p, "ema.start": e} for p in GRID for e in ("0.99", "0.996")]
    parent, ids = make_sweep(store, "three", grid, keys)
    for run_id in ids[1:]:  # stopped by the scheduler, then evaluated where they stopped: cells like any other
        client.set_tag(run_id, "oskar.trial_status", "early_stopped")
        client.set_tag(run_id, "oskar.evaluated_at_step", "2")
    client.set_tag(ids[0], "oskar.evaluated_at_step", "5")
    page = build_report("three", tmp_path, tracking_uri=uri, parent_run_id=parent)
    best = [r for r in parse_table(page).rows if r["attrs"].get("class") == "best"]
    # the best among the trials that trained to the end, though stopped ones score higher where they stopped
    assert [r["attrs"]["data-run-id"] for r in best] == [ids[0]]
    names = {p.name for p in tmp_path.glob("*.png")}
    for metric in (TOP1, "eval/retrieval/t2v/R1", "eval/vqa/accuracy"):
        for a, b in (keys[:2], keys[::2], keys[1:]):
            assert f"heatmap_{metric.replace('/', '_')}_{a}_x_{b}.png" in names
    sweep = load_sweep("three", uri, parent)
    for a, b in (keys[:2], keys[::2], keys[1:]):
        assert not heatmap_table(sweep, "eval/vqa/accuracy", [a, b]).isna().any().any()
    steps = pd.to_numeric(sweep.frame["tags.oskar.evaluated_at_step"])
    low, high = (heatmap_table(sweep, "", keys[:2], values=steps, how=how) for how in ("min", "max"))
    assert (low.iloc[0, 0], high.iloc[0, 0]) == (2, 5)  # 32 x 16: the finished trial and a stopped one


# --- 95 % intervals (issue 30, point 4) -----------------------------------------------------------------------
def test_an_interval_end_is_never_a_metric_of_its_own():
    from oskar_ray.metric_names import headline_metrics, interval_keys, is_interval

    for key in (TOP1, "eval/retrieval/v2t/medR", "eval/lowshot/video/linear/10pct/top1"):
        assert all(is_interval(k) for k in interval_keys(key)) and not is_interval(key)
    keys = [TOP1, "eval/retrieval/t2v/R1", "eval/vqa/accuracy"]
    with_ends = keys + [k for key in keys for k in interval_keys(key)]
    assert headline_metrics(with_ends) == headline_metrics(keys)  # an interval end never stands for a task


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
