"""The report tests' store: a real SQLite MLflow store with sweep parents and trial runs (imported by
tests/test_report*.py; one store per test module, creating a SQLite store costs seconds)."""

from __future__ import annotations

import time
from html.parser import HTMLParser
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from oskar_ray.eval.intervals import interval_keys, wilson
from oskar_ray.metric_names import PROBE_PREFIX

TOP1 = "eval/action/video/linear/top1"
BASE_PARAMS = {"train.steps": "4", "tracking.experiment": "x", "model.dim": "64", "predictor.kind": "cross_attention",
               "budget.input_tokens": "64", "budget.target_tokens": "32", "ema.start": "0.996"}


def new_store(tmp_path_factory) -> tuple[str, MlflowClient]:
    """(URI, client) of a fresh SQLite store: each test module's ``store`` fixture, once per module."""
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
