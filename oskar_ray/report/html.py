"""The report page: one self-contained HTML file (PNGs embedded as base64, inline CSS/JS, no network).

The trials table carries one ``<tr data-run-id=...>`` per run; numeric cells
hold their exact value in ``data-v`` (what the header-click sort uses and
what tests read back); missing values show as ``—``. An eval metric with a 95 % interval reads
``0.335 [0.273, 0.403]``; the column *within noise of best* says, for the ranking metric, whether a trial's
interval overlaps the best trial's (``yes``: the test set does not rank the two apart), and the header names
those trials. Overlapping intervals are a conservative screen: two trials can overlap and still differ.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from .figures import Plot
from .labels import fmt_interval, fmt_value, lower_is_better, short_names
from .runs import SweepRuns

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em 2em;color:#222;max-width:1800px}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555} .meta code{background:#f4f4f4;padding:0 .3em}
.figs{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0;max-width:100%}
figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.5em 0}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ddd;padding:.25em .5em;white-space:nowrap} td.num{text-align:right}
th{background:#f4f4f4;cursor:pointer;position:sticky;top:0} th:hover{background:#e8e8e8}
tr.best td{background:#e8f5e9} td.tie{background:#fff8e1}
.FAILED,.KILLED{color:#b00020;font-weight:bold} .RUNNING{color:#1565c0}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th').forEach(function(h){ h.dataset.dir = ''; h.textContent = h.dataset.name; });
      th.dataset.dir = asc ? 'asc' : 'desc'; th.textContent = th.dataset.name + (asc ? ' \\u25B2' : ' \\u25BC');
      function key(row){ var c = row.cells[col]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; }
      rows.sort(function(a, b){
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        if (x === '' && y !== '') return 1; if (y === '' && x !== '') return -1;
        var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return asc ? r : -r;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def render(sweep: SweepRuns, plots: list[Plot], table_metrics: list[str], primary: str | None,
           flops: pd.Series) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(_title(sweep))}</title>",
             f"<style>{_CSS}</style></head><body>", _header(sweep, primary)]
    parts += [f"<div class='note'>{_e(n)}</div>" for n in sweep.notes]
    sections: dict[str, list[Plot]] = {}
    for plot in plots:
        sections.setdefault(plot.section, []).append(plot)
    for section, items in sections.items():
        parts.append(f"<h2>{_e(section)}</h2><div class='figs'>")
        parts += [_figure(p) for p in items]
        parts.append("</div>")
    parts.append("<h2>Trials</h2><p class='meta'>Click a column header to sort.</p>")
    parts.append(trials_table(sweep, table_metrics, primary, flops))
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts)


def _title(sweep: SweepRuns) -> str:
    return f"OSKAR sweep report — {sweep.sweep_name or sweep.experiment}"


def _header(sweep: SweepRuns, primary: str | None) -> str:
    counts = sweep.outcome().value_counts()
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    rows = [("experiment", sweep.experiment), ("tracking URI", sweep.tracking_uri),
            ("sweep parent run", sweep.parent_run_id or "— (no sweep parent run)"),
            ("swept parameters", ", ".join(sweep.swept) or "—"), ("trials", f"{len(sweep.frame)} ({status})"),
            ("ranking metric", primary or "—"),
            ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    items = "".join(f"<li>{_e(k)}: <code>{_e(v)}</code></li>" for k, v in rows)
    best = best_run(sweep, primary)
    best_line = ""
    if best is not None:
        row = sweep.frame.loc[best]
        best_line = (f"<p><b>Best trial</b> by <code>{_e(primary)}</code>: <code>{_e(row['label'])}</code> "
                     f"= {_e(_value_text(sweep, primary, best))} (run <code>{_e(row['run_id'])}</code>)</p>"
                     + _noise_line(sweep, primary, best))
    ui = f"mlflow ui --backend-store-uri {sweep.tracking_uri}"
    return (f"<h1>{_e(_title(sweep))}</h1><ul class='meta'>{items}</ul>{best_line}"
            f"<p class='meta'>Open the runs side by side: <code>{_e(ui)}</code></p>")


def _value_text(sweep: SweepRuns, metric: str, index) -> str:
    """``0.335 [0.273, 0.403]`` where the run logged the metric's interval, else the value alone."""
    value = sweep.metric(metric)[index]
    low, high = (end[index] for end in sweep.interval(metric))
    text = fmt_value(float(value))
    return text if pd.isna(low) or pd.isna(high) else f"{text} {fmt_interval(low, high)}"


def within_noise(sweep: SweepRuns, primary: str | None) -> pd.Series:
    """Per run, on the ranking metric: ``best``; ``yes`` where its 95 % interval overlaps the best trial's (the
    test set does not rank the two apart); ``no``; None without a value or an interval (or no best interval)."""
    out = pd.Series(None, index=sweep.frame.index, dtype=object)
    best = best_run(sweep, primary)
    if best is None:
        return out
    low, high = sweep.interval(primary)
    if pd.isna(low[best]) or pd.isna(high[best]):
        return out
    known = low.notna() & high.notna() & sweep.metric(primary).notna()
    overlap = (low <= high[best]) & (high >= low[best])
    out[known] = np.where(overlap[known], "yes", "no")
    out[best] = "best"
    return out


def _noise_line(sweep: SweepRuns, primary: str, best) -> str:
    """Whether the ranking by ``primary`` is more than the test set's noise, in one sentence."""
    noise = within_noise(sweep, primary)
    if noise[best] != "best":
        return (f"<p class='note'><code>{_e(primary)}</code> has no 95 % interval logged for the best trial: "
                "whether the ranking is more than the test set's noise is unknown.</p>")
    tied = sweep.frame.loc[noise == "yes", "label"].tolist()
    if not tied:
        return (f"<p>No other trial's 95 % interval of <code>{_e(primary)}</code> overlaps the best trial's: it "
                "leads by more than the test set's noise.</p>")
    names = ", ".join(f"<code>{_e(label)}</code>" for label in tied)
    return (f"<p class='note'><b>Within noise of the best</b>: {len(tied)} other trial(s) have a 95 % interval of "
            f"<code>{_e(primary)}</code> that overlaps the best trial's — {names}. The test set does not rank "
            "them apart (column <i>within noise of best</i>).</p>")


def best_run(sweep: SweepRuns, primary: str | None):
    """Index of the best run by ``primary`` (None when no run has it), among the trials that trained to the end
    when there are any: a trial stopped early is evaluated where it stopped, and the sweep selects among the
    finished ones (``selected_trial.json``)."""
    if not primary:
        return None
    values = sweep.metric(primary)
    finished = sweep.outcome() == "FINISHED"
    if (finished & values.notna()).any():
        values = values[finished]
    values = values.dropna()
    if values.empty:
        return None
    return values.idxmin() if lower_is_better(primary) else values.idxmax()


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(plot.title)}'>"
            f"<figcaption>{_e(plot.title)} — <code>{_e(plot.path.name)}</code></figcaption></figure>")


NOISE_HEADER = "within noise of best"


def table_columns(sweep: SweepRuns, metrics: list[str], primary: str | None = None) -> list[tuple[str, str]]:
    """(header, frame column) pairs of the trials table, in order; the ranking metric is followed by whether
    each trial is within noise of the best (``_noise``: :func:`within_noise`)."""
    names = short_names(sweep.swept)
    columns = [("trial", "tags.oskar.trial_id"), ("run name", "run_name"), ("status", "status"),
               ("stopped at step", "tags.oskar.stopped_at_step"), ("evaluated at step", "tags.oskar.evaluated_at_step")]
    columns += [(names[k], f"params.{k}") for k in sweep.swept]
    columns += [("train FLOPs", "_flops"), ("final loss", "metrics.loss")]
    for m in metrics:
        columns.append((m.removeprefix("eval/"), f"metrics.{m}"))
        if m == primary:
            columns.append((NOISE_HEADER, "_noise"))
    columns += [("run id", "run_id")]
    return columns


def trials_table(sweep: SweepRuns, metrics: list[str], primary: str | None, flops: pd.Series) -> str:
    noise = within_noise(sweep, primary)
    frame = sweep.frame.assign(_flops=flops, _noise=noise)
    if noise.isna().all():
        frame = frame.drop(columns="_noise")  # the ranking metric has no interval: nothing to say
    columns = [(h, c) for h, c in table_columns(sweep, metrics, primary) if c in frame]
    best = best_run(sweep, primary)
    tips = {"_noise": f"whether the trial's 95 % interval of {primary} overlaps the best trial's"}
    head = "".join(f"<th data-name='{_e(h)}' title='{_e(tips.get(c, c))}'>{_e(h)}</th>" for h, c in columns)
    intervals = {c: sweep.interval(c.removeprefix("metrics.")) for _, c in columns
                 if c.startswith("metrics.") and sweep.has_interval(c.removeprefix("metrics."))}
    body = []
    for index, row in frame.iterrows():
        cells = "".join(_cell(row[c], c, tuple(end[index] for end in intervals[c]) if c in intervals else None)
                        for _, c in columns)
        css = " class='best'" if index == best else ""
        body.append(f"<tr data-run-id='{_e(row['run_id'])}'{css}>{cells}</tr>")
    return (f"<div class='scroll'><table class='sortable' id='trials'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _cell(value, column: str, interval: tuple[float, float] | None = None) -> str:
    if column == "status":
        return f"<td class='{_e(value)}'>{_e(value)}</td>"
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "<td data-v=''>—</td>"
    if column == "_noise":
        return f"<td class='tie'>{_e(value)}</td>" if value == "yes" else f"<td>{_e(value)}</td>"
    if isinstance(value, float) or column.startswith("metrics.") or column == "_flops":
        text = fmt_value(float(value))
        if interval is not None and not pd.isna(interval[0]) and not pd.isna(interval[1]):
            text += " " + fmt_interval(*interval)  # data-v stays the value: sorting and tests read it
        return f"<td class='num' data-v='{float(value)!r}'>{_e(text)}</td>"
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if column.startswith("params.") and not pd.isna(number):
        return f"<td class='num' data-v='{float(number)!r}'>{_e(value)}</td>"
    return f"<td>{_e(value)}</td>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)
