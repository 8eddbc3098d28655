"""Load one sweep's runs from MLflow into a tidy pandas frame.

Which runs:

* ``parent_run_id`` given → its child runs (``tags.mlflow.parentRunId``);
* else the experiment's latest sweep parent (``tags.oskar.role = sweep``) and its children;
* else (plain ``oskar pretrain`` runs) every run of the experiment, and the
  swept parameters are inferred as the params whose values differ across runs.

The frame has the columns of ``mlflow.search_runs`` (``run_id``, ``status``,
``start_time``, ``params.*``, ``metrics.*``, ``tags.*``) plus ``label`` (the
swept values, e.g. ``input_tokens=64, target_tokens=32``). An eval metric's 95 % interval stays in its
companion columns ``metrics.<key>_ci95_lo / _hi`` (:meth:`SweepRuns.interval`). It is built from
``MlflowClient.search_runs`` rather than ``mlflow.search_runs`` so that no
global tracking URI is set (or ``$MLFLOW_TRACKING_URI`` unset) inside the
sweep driver that calls the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from .labels import fmt_value, interval_keys, short_names

#: params that differ between runs without being an ablation
_NOT_SWEPT_PREFIXES = ("tracking.",)
_NOT_SWEPT = {"train.output_dir", "data.path"}


@dataclass
class SweepRuns:
    experiment: str
    tracking_uri: str
    client: MlflowClient
    frame: pd.DataFrame
    swept: list[str]
    parent_run_id: str | None = None
    sweep_name: str = ""
    notes: list[str] = field(default_factory=list)

    def metric_keys(self, prefix: str = "") -> list[str]:
        """Metric keys (without ``metrics.``) starting with ``prefix`` that at least one run has."""
        keys = [c.removeprefix("metrics.") for c in self.frame.columns if c.startswith("metrics." + prefix)]
        return sorted(k for k in keys if self.frame[f"metrics.{k}"].notna().any())

    def metric(self, key: str) -> pd.Series:
        column = f"metrics.{key}"
        return self.frame[column] if column in self.frame else pd.Series(float("nan"), index=self.frame.index)

    def interval(self, key: str) -> tuple[pd.Series, pd.Series]:
        """Per run, the ends of ``key``'s 95 % interval (``<key>_ci95_lo / _hi``; NaN where not logged)."""
        low, high = interval_keys(key)
        return self.metric(low), self.metric(high)

    def has_interval(self, key: str) -> bool:
        low, high = self.interval(key)
        return bool((low.notna() & high.notna()).any())

    def outcome(self) -> pd.Series:
        """Per run: its MLflow status, or ``stopped early`` for a trial the scheduler stopped (such trials end
        FINISHED with ``oskar.trial_status=early_stopped``; KILLED in sweeps logged before that)."""
        stopped = self.frame.get("tags.oskar.trial_status", pd.Series(None, index=self.frame.index)) == "early_stopped"
        return self.frame["status"].where(~stopped, "stopped early")

    def param(self, key: str) -> pd.Series:
        column = f"params.{key}"
        return self.frame[column] if column in self.frame else pd.Series(None, index=self.frame.index, dtype=object)


def resolve_uri(explicit: str | None) -> str:
    """``explicit`` → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<cwd>/mlflow.db`` (the :mod:`oskar_ray.tracking` rule)."""
    from ..config import OskarConfig
    from ..tracking import tracking_uri

    cfg = OskarConfig()
    cfg.tracking.uri = explicit or ""
    return tracking_uri(cfg)


def open_client(uri: str) -> MlflowClient:
    """A client for ``uri``; a SQLite file that does not exist is an error (MLflow would create it empty)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise FileNotFoundError(f"no MLflow store at {uri} ({db} does not exist); pass --tracking-uri "
                                    "or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri)


def load_sweep(experiment: str, uri: str, parent_run_id: str | None = None) -> SweepRuns:
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ValueError(f"experiment {experiment!r} not found in {uri} (experiments there: {known})")
    exp_id = found.experiment_id
    parent = _parent_run(client, exp_id, parent_run_id, f"{experiment!r} in {uri}")
    if parent is not None:
        runs = _search(client, exp_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        where = f"sweep parent run {parent.info.run_id} of experiment {experiment!r} in {uri}"
    else:
        runs = _search(client, exp_id, "")
        where = f"experiment {experiment!r} in {uri}"
    if not runs:
        raise ValueError(f"no trial runs under {where}")
    frame = runs_frame(runs)
    swept = _swept_from_tags(parent, frame, prefer_parent=parent_run_id is not None) or infer_varying(frame)
    frame["label"] = trial_labels(frame, swept)
    notes = [] if parent is not None else ["no sweep parent run found: all runs of the experiment are shown and "
                                           "the swept parameters are the params that differ between runs"]
    sweep_name = parent.data.tags.get("oskar.sweep", parent.info.run_name or "") if parent else ""
    return SweepRuns(experiment, uri, client, frame, swept, parent.info.run_id if parent else None, sweep_name, notes)


def _parent_run(client: MlflowClient, exp_id: str, parent_run_id: str | None, where: str) -> Run | None:
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as err:  # MlflowException (RESOURCE_DOES_NOT_EXIST) or a malformed id
            raise ValueError(f"parent run {parent_run_id!r} not found (experiment {where}): {err}") from err
        if parent.info.experiment_id != exp_id:
            raise ValueError(f"run {parent_run_id} belongs to experiment id {parent.info.experiment_id}, "
                             f"not to experiment {where}")
        return parent
    parents = _search(client, exp_id, "tags.`oskar.role` = 'sweep'", max_results=1)
    return parents[0] if parents else None


def _search(client: MlflowClient, exp_id: str, filter_string: str, max_results: int | None = None) -> list[Run]:
    """All matching runs (active ones), newest first, following MLflow's pagination."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string, ViewType.ACTIVE_ONLY, max_results=max_results or 1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            return runs


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """The ``mlflow.search_runs`` layout, oldest run first (trial order)."""
    rows = []
    for run in runs:
        info = run.info
        row = {"run_id": info.run_id, "experiment_id": info.experiment_id, "status": info.status,
               "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
               "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
               "run_name": info.run_name or ""}
        row.update({f"metrics.{k}": float(v) for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values("start_time", kind="stable").reset_index(drop=True)
    # the metrics as one float block: assigning hundreds of columns in place (or a per-column astype) fragments
    # the frame, and pandas then warns on every later column insert
    metric_cols = [c for c in frame.columns if c.startswith("metrics.")]
    metrics = pd.DataFrame(frame[metric_cols].to_numpy(dtype=float), columns=metric_cols, index=frame.index)
    return pd.concat([frame.drop(columns=metric_cols), metrics], axis=1)


def _swept_from_tags(parent: Run | None, frame: pd.DataFrame, prefer_parent: bool) -> list[str]:
    text = parent.data.tags.get("oskar.swept_params", "") if parent is not None else ""
    if not text and "tags.oskar.swept_params" in frame:
        values = frame["tags.oskar.swept_params"].dropna()
        text = values.iloc[0] if len(values) else ""
    keys = [k.strip() for k in str(text).split(",") if k.strip()]
    return [k for k in keys if f"params.{k}" in frame] or keys


def infer_varying(frame: pd.DataFrame) -> list[str]:
    """Params with more than one distinct value across runs (ignoring paths and tracking settings)."""
    out = []
    for column in frame.columns:
        if not column.startswith("params."):
            continue
        key = column.removeprefix("params.")
        if key in _NOT_SWEPT or key.startswith(_NOT_SWEPT_PREFIXES):
            continue
        if frame[column].fillna("<unset>").nunique() > 1:
            out.append(key)
    return out


def trial_labels(frame: pd.DataFrame, swept: list[str]) -> pd.Series:
    """``input_tokens=64, target_tokens=32`` per run; the run name when nothing was swept."""
    names = short_names(swept)
    labels = []
    for _, row in frame.iterrows():
        parts = [f"{names[k]}={fmt_value(row.get(f'params.{k}'))}" for k in swept]
        label = ", ".join(parts) or row.get("tags.oskar.trial_id") or row["run_name"] or row["run_id"][:8]
        labels.append(label)
    series = pd.Series(labels, index=frame.index)
    dupes = series.duplicated(keep=False)
    if dupes.any():  # repeated configs (seeds): keep labels distinct
        series[dupes] = series[dupes] + " (" + frame.loc[dupes, "run_id"].str[:6] + ")"
    return series


def as_values(series: pd.Series) -> tuple[pd.Series, bool]:
    """A param column as numbers when every present value parses as one, else as text; and whether numeric."""
    present = series.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    is_bool = present.astype(str).str.lower().isin(["true", "false"]).all()
    if len(present) and numbers.notna().all() and not is_bool:
        return pd.to_numeric(series, errors="coerce"), True
    return series.astype(object).where(series.notna(), None), False


def histories(sweep: SweepRuns, keys: list[str]) -> dict[tuple[str, str], pd.DataFrame]:
    """``(run_id, key)`` → frame of ``step``/``value`` sorted by step, for the runs that logged ``key``."""
    out = {}
    for key in keys:
        for run_id in sweep.frame.loc[sweep.metric(key).notna(), "run_id"]:
            points = sweep.client.get_metric_history(run_id, key)
            if points:
                data = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
                out[(run_id, key)] = data.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    return out
