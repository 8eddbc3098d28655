"""``oskar report``: a real SQLite MLflow store with sweep parents and trial runs → HTML + PNGs.

One store per module (creating a SQLite store costs seconds); each test uses its own experiment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_store import (
    GRID,
    GRID_KEYS,
    TOP1,
    log_trial,
    make_sweep,
    new_store,
    parse_table,
)

from oskar_ray.cli import main
from oskar_ray.report import build_report
from oskar_ray.report.curves import pareto_front


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return new_store(tmp_path_factory)


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
