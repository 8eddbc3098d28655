"""The default sweep's early stopping vs the full token-budget grid: compute, best trial, early signal.

Runbook::

    python experiments/bench_sweep.py                             # both sweeps (~35 min on 2 cores), then compare
    python experiments/bench_sweep.py --full runs/sweeps_fullgrid/token_budget-<time> \\
                                      --sweep runs/sweeps/token_budget-<time>      # compare two finished sweeps
    python experiments/bench_sweep.py --full DIR                  # signal study + simulated ASHA only
    python experiments/bench_sweep.py --full DIR_A DIR_B --sweep DIR  # a grid run in parts (e.g. one
                                      # --grid row per run, same data): their trials are pooled

1. the full grid (``--scheduler fifo``, every trial to the end, probe on all
   views and RankMe every 25 steps) — unless ``--full`` names a finished one;
2. the default sweep under its scheduler (``sweep_token_budget.py``: synchronous
   successive halving; ``--scheduler asha`` for ASHA) — unless ``--sweep``;
3. prints: compute spent (sum over trials of steps trained x FLOPs per step)
   sweep / grid (goal <= 0.6) and whether both pick the same best trial on
   ``select.metric``; the Spearman rank correlation, across the grid's trials,
   of each candidate early signal at each ASHA rung with the final metric; and
   ASHA replayed offline on the grid's recorded curves for each signal over
   random trial orders (compute ratio, how often the true best survives).

``--smoke`` instead runs ``experiments/bench_sweep_overhead.py``: the smoke sweep's wall vs the summed
training + evaluation compute of its trials, and where the rest goes (issue 29: ratio <= 3).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "experiments" / "sweep_token_budget.py"
#: candidate early signals (mode max unless listed in MINIMISE)
SIGNALS = ["probe/fusion/knn_top1", "probe/skeleton/knn_top1", "probe/video/knn_top1", "probe/mean",
           "health/video/rankme", "health/skeleton/rankme", "loss"]
MINIMISE = {"loss"}
FINALS = ["eval/action/video/linear/top1", "eval/action/video/knn/top1", "eval/action/fusion/linear/top1",
          "eval/action/fusion/knn/top1", "eval/action/skeleton/linear/top1", "eval/retrieval/t2v/R1",
          "eval/vqa/accuracy"]
#: test clips of the built-in benchmark: an accuracy's binomial standard error is sqrt(p (1 - p) / n)
TEST_CLIPS = 200


def run(args: list[str]) -> Path:
    """Run the sweep script; returns its directory (printed as 'sweep directory: ...')."""
    out = subprocess.run([sys.executable, str(SWEEP), *args], cwd=REPO, text=True, capture_output=True)
    sys.stdout.write(out.stdout[-4000:])
    if out.returncode != 0:
        sys.exit(f"sweep failed ({out.returncode}):\n{out.stderr[-4000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("sweep directory: "))
    return Path(line.removeprefix("sweep directory: ").strip())


def load(exp_dir: Path) -> tuple[dict, pd.DataFrame, dict]:
    """(sweep state, one row per trial: point, status, steps, flops, finals; curves[trial][signal] = {step: v})."""
    state = json.loads((exp_dir / "oskar_sweep.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    swept = state["spec"]["space"].keys()
    rows, curves = [], {}
    for r in runs:
        trial, metrics = r.data.tags["oskar.trial_id"], r.data.metrics
        steps = int(metrics.get("steps_trained", 0))
        rows.append({"trial": trial, **{k: r.data.params.get(k) for k in swept},
                     "status": r.data.tags.get("oskar.trial_status", r.info.status), "steps": steps,
                     "flops_per_step": metrics.get("flops_per_step", math.nan),
                     **{k: metrics.get(k, math.nan) for k in FINALS}})
        curves[trial] = {s: {m.step: m.value for m in client.get_metric_history(r.info.run_id, s)} for s in SIGNALS}
    frame = pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)
    frame["train_flops"] = frame["steps"] * frame["flops_per_step"]
    return state, frame, curves


def best_point(frame: pd.DataFrame, state: dict) -> tuple[str, float]:
    """The best trial that trained to the end (as the sweep selects: stopped trials are evaluated at their stop
    step, not comparable), as ``key=value, ...`` and its value."""
    select = state["spec"]["select"]
    done = frame[frame["status"] == "completed"].dropna(subset=[select["metric"]])
    row = done.loc[done[select["metric"]].idxmax() if select["mode"] == "max" else done[select["metric"]].idxmin()]
    keys = list(state["spec"]["space"])
    return ", ".join(f"{k}={row[k]}" for k in keys), float(row[select["metric"]])


def rungs(state: dict) -> list[int]:
    s, steps = state["spec"]["scheduler"], _steps(state)
    out, r = [], s["grace_period"]
    while r < steps:
        out.append(int(r))
        r *= s["reduction_factor"]
    return out


def _steps(state: dict) -> int:
    from oskar_ray.tune.spec import spec_from_dict

    spec = spec_from_dict({k: v for k, v in state["spec"].items() if k != "profile"})
    return spec.base_config(state["base_overrides"]).train.steps


def signal_table(state: dict, frame: pd.DataFrame, curves: dict, every_step: bool = False) -> pd.DataFrame:
    """Spearman correlation (across trials) of each signal at each rung (``every_step``: at every step it was
    logged, to choose rungs) with each final metric (NaN where a signal is the same for every trial: saturated,
    it cannot rank)."""
    warnings.filterwarnings("ignore", message="An input array is constant")
    rows = []
    finals = [f for f in FINALS if f in frame and frame[f].notna().any()]
    for signal in SIGNALS:
        logged = sorted({step for t in frame["trial"] for step in curves[t][signal]})
        for rung in (logged if every_step else rungs(state)):
            values = pd.Series({t: curves[t][signal].get(rung, math.nan) for t in frame["trial"]})
            if values.isna().all():
                continue
            sign = -1.0 if signal in MINIMISE else 1.0
            row = {"signal": signal, "step": rung}
            for final in finals:
                target = frame.set_index("trial")[final]
                row[final.removeprefix("eval/").removeprefix("action/")] = \
                    (sign * values).corr(target, method="spearman")
            rows.append(row)
    return pd.DataFrame(rows)


def within_noise(selected: float, best: float, n: int = TEST_CLIPS) -> tuple[bool, float]:
    """Whether a selected trial's accuracy is within two standard errors of the difference from the best one
    (binomial, ``n`` test clips each); and that bound."""
    p = (selected + best) / 2
    bound = 2 * math.sqrt(2 * p * (1 - p) / n)
    return best - selected <= bound, bound


def replay_asha(state: dict, frame: pd.DataFrame, curves: dict, signal: str, order: list[str],
                concurrent: int = 2) -> tuple[float, set[str]]:
    """Offline ASHA on recorded curves: (compute spent / grid compute, trials that ran to the end).

    Time advances one step per running trial; a freed slot starts the next trial in ``order``.
    Decisions use the same scheduler class and rungs as the sweep.
    """
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from oskar_ray.tune.schedulers import TrainedTrialsFinishASHA

    s, steps = state["spec"]["scheduler"], _steps(state)
    mode = "min" if signal in MINIMISE else "max"
    sched = TrainedTrialsFinishASHA(time_attr="step", metric=signal, mode=mode, max_t=steps,
                                    grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])
    flops = frame.set_index("trial")["flops_per_step"]
    pending, running, spent, finished = list(order), {}, 0.0, set()
    while pending or running:
        while pending and len(running) < concurrent:
            trial = pending.pop(0)
            running[trial] = 0
            sched.on_trial_add(None, SimpleNamespace(trial_id=trial))
        for trial in list(running):
            running[trial] += 1
            step = running[trial]
            spent += flops[trial]
            value = curves[trial][signal].get(step)
            if value is not None and step < steps:
                result = {"step": step, signal: value}
                if sched.on_trial_result(None, SimpleNamespace(trial_id=trial), result) == TrialScheduler.STOP:
                    del running[trial]
                    continue
            if step >= steps:
                finished.add(trial)
                del running[trial]
    return spent / float((flops * steps).sum()), finished


def replay_table(state: dict, frame: pd.DataFrame, curves: dict, orders: int = 50) -> pd.DataFrame:
    """Compute ratio and whether the grid's best trial (on each fusion final metric) runs to the end."""
    bests = {final.removeprefix("eval/action/"): frame.loc[frame[final].idxmax(), "trial"] for final in FINALS[:2]}
    rng = np.random.default_rng(0)
    trials = list(frame["trial"])
    perms = [trials] + [list(rng.permutation(trials)) for _ in range(orders - 1)]
    rows = []
    for signal in SIGNALS:
        if all(not curves[t][signal] for t in trials):
            continue
        runs = [replay_asha(state, frame, curves, signal, order) for order in perms]
        row = {"signal": signal, "ratio_grid_order": runs[0][0], "ratio_mean": float(np.mean([r[0] for r in runs]))}
        for name, best in bests.items():
            row[f"best {name} kept (grid order)"] = best in runs[0][1]
            row[f"best {name} kept (share)"] = float(np.mean([best in r[1] for r in runs]))
        rows.append(row)
    return pd.DataFrame(rows)


def load_grid(dirs: list[Path]) -> tuple[dict, pd.DataFrame, dict]:
    """:func:`load` over one or more full-grid sweeps (the grid run in parts), trials pooled.

    The parts must share the sweep's spec apart from the grid values (same steps, scheduler,
    selection metric), else their trials are not comparable.
    """
    parts = [load(d) for d in dirs]
    state = parts[0][0]
    for d, (other, _, _) in zip(dirs[1:], parts[1:], strict=True):
        mismatch = [k for k in ("scheduler", "select", "overrides") if other["spec"].get(k) != state["spec"].get(k)]
        if _run_settings(other) != _run_settings(state):
            mismatch.append("base_overrides (data, tracking, threads)")
        if mismatch:
            sys.exit(f"{d}: not the same sweep as {dirs[0]} (differs in {', '.join(mismatch)})")
    frame = pd.concat([f for _, f, _ in parts], ignore_index=True).sort_values("trial").reset_index(drop=True)
    curves = {t: c for _, _, cs in parts for t, c in cs.items()}
    return state, frame, curves


def _run_settings(state: dict) -> list[str]:
    """The sweep's base overrides less its own output directory (which differs per run by design)."""
    return sorted(o for o in state["base_overrides"] if not o.startswith("train.output_dir="))


def compare(full_dirs: list[Path], sweep_dir: Path | None) -> None:
    state, full, curves = load_grid(full_dirs)
    full_dir = ", ".join(map(str, full_dirs))
    full = full[full["status"] == "completed"].reset_index(drop=True)  # a grid still running: its finished part
    pd.set_option("display.width", 200)
    fmt = {"float_format": lambda v: f"{v:.3f}"}
    print(f"\n== full grid: {full_dir}\n" + full.drop(columns=["flops_per_step"]).to_string(index=False, **fmt))
    grid_best = best_point(full, state)
    print(f"best on {state['spec']['select']['metric']}: {grid_best[0]} ({grid_best[1]:.3f})")
    print(f"\n== Spearman rank correlation of each early signal (at every step it was logged) with the final "
          f"metrics ({len(full)} trials)\n" + signal_table(state, full, curves, every_step=True).to_string(
              index=False, **fmt))
    print("\n== ASHA replayed on the grid's curves (concurrency 2; grid order and 50 random orders)\n"
          + replay_table(state, full, curves).to_string(index=False, **fmt))
    if sweep_dir is None:
        return
    a_state, swept, _ = load(sweep_dir)
    kind = a_state["spec"]["scheduler"]["kind"].upper()
    ratio = swept["train_flops"].sum() / full["train_flops"].sum()
    sweep_best = best_point(swept, a_state)
    grid_best = best_point(full, {**state, "spec": {**state["spec"], "select": a_state["spec"]["select"]}})
    print(f"\n== {kind} sweep: {sweep_dir}\n" + swept.drop(columns=["flops_per_step"]).to_string(index=False, **fmt))
    print(f"\ncompute (sum of steps x FLOPs/step): {kind} {swept['train_flops'].sum():.3e} vs grid "
          f"{full['train_flops'].sum():.3e} -> ratio {ratio:.2f} (goal <= 0.6)")
    close, bound = within_noise(_grid_value(full, a_state, sweep_best[0]), grid_best[1])
    print(f"best trial on the {kind} sweep's {a_state['spec']['select']['metric']}: grid {grid_best[0]} "
          f"({grid_best[1]:.3f}); {kind} {sweep_best[0]} ({sweep_best[1]:.3f}) -> "
          f"{'same' if grid_best[0] == sweep_best[0] else 'different'}; the selected point scores "
          f"{_grid_value(full, a_state, sweep_best[0]):.3f} on the full grid: "
          f"{'within' if close else 'OUTSIDE'} noise of the grid's best (2 s.e. of a difference = {bound:.3f})")
    a_spec = a_state["spec"]
    select, signal = a_spec["select"]["metric"], a_spec["scheduler"]["metric"]
    study = {**state, "spec": {**state["spec"], "scheduler": a_spec["scheduler"]}}
    for rung in rungs(study):
        values = pd.Series({t: curves[t].get(signal, {}).get(rung, math.nan) for t in full["trial"]})
        rho = values.corr(full.set_index("trial")[select], method="spearman") if select in full else math.nan
        print(f"rank agreement (Spearman, {len(full)} grid trials) of the rung metric {signal} at step {rung} with "
              f"the final {select}: {rho:.2f} (goal >= 0.8)")
    for metric in [f for f in FINALS if full[f].notna().any() and swept[f].notna().any()]:  # the other finals
        g, a = (best_point(f, {"spec": {**s["spec"], "select": {"metric": metric, "mode": "max"}}})
                for f, s in ((full, state), (swept, a_state)))
        print(f"  on {metric}: grid {g[0]} ({g[1]:.3f}), {kind} {a[0]} ({a[1]:.3f}) -> "
              f"{'same' if g[0] == a[0] else 'different'}")


def _grid_value(full: pd.DataFrame, state: dict, point: str) -> float:
    """The full grid's value of the selection metric at a point ("key=value, ..." as best_point writes it)."""
    keys = list(state["spec"]["space"])
    labels = full.apply(lambda row: ", ".join(f"{k}={row[k]}" for k in keys), axis=1)
    return float(full.loc[labels == point, state["spec"]["select"]["metric"]].mean())


def main() -> None:
    if "--smoke" in sys.argv[1:]:  # = experiments/bench_sweep_overhead.py (its options follow)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        __import__("bench_sweep_overhead").main([a for a in sys.argv[1:] if a != "--smoke"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", type=Path, nargs="+",
                        help="finished full-grid sweep directories, pooled (else the grid is run)")
    parser.add_argument("--sweep", "--asha", type=Path, dest="sweep",
                        help="a finished default sweep directory, any scheduler (else it is run)")
    args = parser.parse_args()
    full = args.full or [run(["--scheduler", "fifo", "--experiment", "oskar-sweep-token_budget-fullgrid",
                             "--set", "eval.online_probe_views=[video,skeleton,fusion]", "--set",
                             "eval.rankme_every=25", "--storage-path", "runs/sweeps_fullgrid"])]
    sweep = args.sweep or (None if args.full else run([]))
    compare(full, sweep)


if __name__ == "__main__":
    main()
