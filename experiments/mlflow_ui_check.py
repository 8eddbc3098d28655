"""Look at a sweep in the real MLflow UI, in a real (headless) browser, and keep screenshots.

Runbook::

    apt-get install chromium && pip install playwright          # once; playwright drives Debian's Chromium
    python experiments/mlflow_ui_check.py                        # the newest token_budget sweep in ./mlflow.db
    python experiments/mlflow_ui_check.py --tracking-uri sqlite:///abs/mlflow.db --experiment oskar-sweep-x \\
        --out runs/ui_check

Starts ``mlflow server`` on 127.0.0.1 (a free port, one worker), opens the sweep's experiment page and the compare
page of its trial runs, and checks what a user must see (exit 1 and the reason otherwise):

1. the experiment opens on the runs table of a model-training experiment (``mlflow.experimentKind``), not the
   GenAI traces view, and lists every trial run by name;
2. the compare page offers the parallel-coordinates plot, its parameter list holds the swept params and its
   metric list each task's headline ``eval/*`` metric (MLflow lists the metrics all compared runs share: every
   trial has them, early-stopped ones evaluated where they stopped); those metrics are added to the plot.

Screenshots: ``runs_table.png``, ``compare.png``, ``compare_metrics.png`` (the metric list open) in ``--out``.
``tests/test_mlflow_ui.py`` runs this when Chromium and playwright are installed (they are not in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from oskar_ray.metric_names import headline_metrics

CHROMIUM = "/usr/bin/chromium"
#: the flags this machine's closed network needs (no background connections) as root in a container
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(uri: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.read().strip() == b"OK":
                    return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"mlflow server on port {port} did not answer /health within 60 s")


def runs_page_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table. MLflow 3.x's UI opens every experiment in its GenAI view until the user
    switches to "Model training" (kept in the browser); ``workflowType`` in the URL selects it, whatever the
    browser remembers (the sweep prints this link)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def sweep_runs(client: MlflowClient, experiment: str) -> tuple[str, object, list]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {client.tracking_uri}")
    parents = client.search_runs([found.experiment_id], "tags.`oskar.role` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SystemExit(f"experiment {experiment!r} has no sweep parent run")
    children = client.search_runs([found.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return found.experiment_id, parents[0], children


def check(uri: str, experiment: str, out: Path) -> list[str]:
    """Screenshots into ``out``; returns the problems found (empty: the UI reads as an ablation)."""
    from playwright.sync_api import sync_playwright

    client = MlflowClient(uri)
    exp_id, parent, children = sweep_runs(client, experiment)
    swept = [k for k in parent.data.tags.get("oskar.swept_params", "").split(",") if k]
    evals = sorted({k for c in children for k in c.data.metrics if k.startswith("eval/")})
    problems = []
    if client.get_experiment(exp_id).tags.get("mlflow.experimentKind") != "custom_model_development":
        problems.append("the experiment lacks the tag mlflow.experimentKind=custom_model_development")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(uri, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            base = f"http://127.0.0.1:{port}"
            page.goto(runs_page_url(base, exp_id), wait_until="load")
            page.wait_for_timeout(4000)
            page.screenshot(path=str(out / "runs_table.png"), full_page=True)
            text = page.inner_text("body")
            if "Run Name" not in text:
                problems.append("the experiment did not open on the runs table")
            listed = re.search(r"(\d+) matching runs", text)
            if not listed or int(listed.group(1)) < len(children) + 1:
                problems.append(f"the runs table does not hold the sweep's {len(children) + 1} runs")
            ids = json.dumps([c.info.run_id for c in children])
            page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([exp_id])}", wait_until="load")
            page.wait_for_timeout(5000)
            page.screenshot(path=str(out / "compare.png"), full_page=True)
            if "Parallel Coordinates" not in page.content():
                problems.append("the compare page shows no parallel-coordinates plot")
            problems += [f"swept param {name!r} is not offered by the parallel-coordinates plot"
                         for name in swept if not offer(page, "Parameters:", name, choose=False)]
            # the headline metric of each task: chosen, so the screenshot shows swept params against them
            problems += [f"eval metric {name!r} is not offered by the parallel-coordinates plot"
                         for name in headline_metrics(evals) if not offer(page, "Metrics:", name, choose=True)]
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "compare_metrics.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return problems


def offer(page, label: str, name: str, choose: bool) -> bool:
    """Whether the parallel-coordinates control after ``label`` lists ``name`` (typed into its search box; the
    list itself is virtualised); ``choose``: also add it to the plot."""
    box = page.get_by_text(label, exact=True).locator("xpath=following::*[@role='combobox'][1]")
    if name in chosen(box):
        return True
    box.click()
    page.keyboard.type(name)
    page.wait_for_timeout(800)
    found = name in [o.strip() for o in page.get_by_role("option").all_inner_texts()]
    if found and choose:
        page.keyboard.press("Enter")  # the one match is the active option
    page.keyboard.press("Escape")
    return found and (not choose or name in chosen(box))


def chosen(box) -> list[str]:
    """The values a control has chosen (its search input describes them)."""
    return [v.strip() for v in (box.get_attribute("aria-description") or "").split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path('mlflow.db').resolve()}")
    parser.add_argument("--experiment", default="oskar-sweep-token_budget")
    parser.add_argument("--out", type=Path, default=Path("runs/ui_check"))
    args = parser.parse_args(argv)
    problems = check(args.tracking_uri, args.experiment, args.out)
    print(f"screenshots: {args.out / 'runs_table.png'}, {args.out / 'compare.png'}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("the MLflow UI reads as an ablation" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
