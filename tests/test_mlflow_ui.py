"""The sweep in the real MLflow UI (mlflow server + headless Chromium): runs table, compare page, screenshots.

Needs Debian's Chromium and playwright (``experiments/mlflow_ui_check.py``, README "Comparing ablations"); CI has
neither, so there the test skips and the README's documented check stands.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _check_module():
    spec = importlib.util.spec_from_file_location("mlflow_ui_check", REPO / "experiments" / "mlflow_ui_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep_store(tmp_path: Path) -> str:
    from oskar_ray.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "oskar-sweep-ui")
    swept = "budget.input_tokens,budget.target_tokens"
    parent = client.create_run(exp, run_name="sweep ui", tags={"oskar.role": "sweep", "oskar.swept_params": swept})
    now = int(time.time() * 1000)
    for i, (tokens_in, tokens_out) in enumerate([(32, 16), (64, 16), (64, 48)]):
        run = client.create_run(exp, run_name=f"t{i} input_tokens={tokens_in}", tags={
            "mlflow.parentRunId": parent.info.run_id, "oskar.role": "trial", "oskar.trial_id": f"t{i}"})
        metrics = {"eval/action/video/linear/top1": 0.2 + 0.01 * i, "eval/retrieval/t2v/R1": 2.0 + i,
                   "eval/vqa/accuracy": 0.3, "flops_per_step": 1e9 * tokens_in}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         params=[Param("budget.input_tokens", str(tokens_in)),
                                 Param("budget.target_tokens", str(tokens_out))],
                         tags=[RunTag("oskar.trial_status", "early_stopped" if i else "completed")])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return uri


def test_the_ui_opens_the_runs_table_and_compares_swept_params_against_eval_metrics(tmp_path):
    pytest.importorskip("playwright")
    module = _check_module()
    if not Path(module.CHROMIUM).is_file():
        pytest.skip(f"{module.CHROMIUM} not installed (apt-get install chromium)")
    problems = module.check(_sweep_store(tmp_path), "oskar-sweep-ui", tmp_path / "shots")
    assert problems == []
    assert (tmp_path / "shots" / "runs_table.png").stat().st_size > 10_000
    assert (tmp_path / "shots" / "compare.png").stat().st_size > 10_000
