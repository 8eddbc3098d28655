"""``evaluate``: one call runs the downstream suite on a checkpoint or an in-memory model.

Runbook::

    from oskar_ray.eval import evaluate
    metrics = evaluate("runs/pretrain-.../checkpoint_000002", tasks=["action", "retrieval"])
    metrics["eval/action/video/attentive/top1"]
    metrics = evaluate(model, "data/synth", ["action"], cfg, log=False)      # sweeps, in-process
    metrics = evaluate(ckpt, baseline="random")                             # same protocol, random init

``checkpoint_or_model``: a checkpoint directory (``model.safetensors`` or
``weights.safetensors`` + ``config.yaml``; ``state.json`` names the MLflow run),
a weights file next to a ``config.yaml``, or an :class:`Oskar`. ``dataset``
defaults to ``cfg.data.path`` (the built-in benchmark is synthesised if that is
empty). Tasks: :data:`TASKS`. Returned keys are ``eval/<task>/<metric>``; the
same go to MLflow — onto the pretraining run, or a child run for a baseline,
or a fresh run for an external checkpoint — with ``summary.json`` and the PNGs.
Every task starts from the same seed, so results do not depend on task order.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from .. import storage
from ..config import OskarConfig, load_config
from ..metric_names import EVAL_TASKS
from ..probes.views import action_views
from .action import run_action
from .artifacts import log_eval, write_artifacts
from .context import EvalContext, TaskResult, text_trained
from .features import FeatureCache
from .health import run_health
from .intervals import interval_keys, is_interval
from .localization import LOC_VIEWS, run_localization
from .lowshot import run_lowshot, subsets
from .retrieval import TEXT_VIEW as RETRIEVAL_TEXT
from .retrieval import VIDEO_VIEW as RETRIEVAL_VIDEO
from .retrieval import ZERO_SHOT_VIDEO, run_retrieval
from .robustness import MODALITIES as ROBUST
from .robustness import run_robustness
from .robustness import settings as robustness_settings
from .vqa import CLIP_VIEWS, QUESTION_VIEW, run_vqa

TASKS: dict[str, Callable[[EvalContext], TaskResult]] = {
    "action": run_action, "lowshot": run_lowshot, "localization": run_localization, "retrieval": run_retrieval,
    "vqa": run_vqa, "health": lambda ctx: TaskResult(metrics=run_health(ctx)), "robustness": run_robustness,
}
#: the feature views each task reads: the cache extracts just the union for the tasks asked (one pass per split)
TASK_VIEWS: dict[str, Callable[[OskarConfig], list[str]]] = {
    "action": lambda cfg: list(action_views(cfg.enabled_modalities).values()),
    "lowshot": lambda cfg: list(action_views(cfg.enabled_modalities).values()),
    "localization": lambda cfg: list(LOC_VIEWS.values()),
    "retrieval": lambda cfg: [RETRIEVAL_VIDEO, RETRIEVAL_TEXT, ZERO_SHOT_VIDEO],
    "vqa": lambda cfg: [QUESTION_VIEW, *(v for name in cfg.eval.vqa_views for v in CLIP_VIEWS[name])],
    "health": lambda cfg: [*action_views(cfg.enabled_modalities).values(), RETRIEVAL_TEXT],
    "robustness": lambda cfg: [view for n in (3, 2) for mods in combinations(ROBUST, n)
                               for view in robustness_settings(mods).values()],
}
assert set(TASKS) == set(EVAL_TASKS) == set(TASK_VIEWS), "metric_names.EVAL_TASKS names every task"


def task_views(tasks: list[str], cfg: OskarConfig) -> list[str]:
    """The views ``tasks`` read, in first-use order."""
    return list(dict.fromkeys(view for task in tasks for view in TASK_VIEWS[task](cfg)))


@dataclass
class EvalResult:
    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)
    run_id: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    #: the run's eval.* tags: baseline, tasks, why a task was skipped or failed, whether text was trained
    tags: dict[str, str] = field(default_factory=dict)
    #: task -> "ExceptionType: message" for each task that raised (the other tasks still ran and logged)
    errors: dict[str, str] = field(default_factory=dict)


def evaluate(checkpoint_or_model: Any, dataset: str | Path | None = None, tasks: list[str] | None = None,
             cfg: OskarConfig | None = None, **kwargs: Any) -> dict[str, float]:
    """The flat ``eval/<task>/<metric>`` dict (see :func:`evaluate_full` for keyword options)."""
    return evaluate_full(checkpoint_or_model, dataset, tasks, cfg, **kwargs).metrics


def evaluate_full(checkpoint_or_model: Any, dataset: str | Path | None = None, tasks: list[str] | None = None,
                  cfg: OskarConfig | None = None, *, baseline: str | None = None, log: bool = True,
                  run_id: str | None = None, out_dir: str | Path | None = None, seed: int | None = None,
                  progress: bool = True, cache_dir: str | Path | None = None) -> EvalResult:
    model, cfg, source = load_model(checkpoint_or_model, cfg)
    tasks = _check_tasks(tasks or cfg.eval.tasks)
    dataset = _dataset(dataset, cfg)
    pretrain_run = run_id if run_id is not None else source.get("run_id", "")
    if baseline:
        from .baselines import baseline_model

        model, cfg = baseline_model(baseline, cfg, dataset, cache_dir, progress)
    seed = cfg.train.seed if seed is None else seed
    ctx = _context(model, cfg, dataset, seed, progress, cache_dir, task_views(tasks, cfg))
    runs = _run_tasks(ctx, tasks)
    metrics, plots, seconds, errors = runs.metrics, runs.plots, runs.seconds, runs.errors
    result = EvalResult(metrics, seconds=seconds, errors=errors)
    tags = {"eval.baseline": baseline or "none", "eval.tasks": ",".join(tasks), **split_tags(ctx, tasks),
            **runs.notes, **{f"eval.{task}.skipped": why for task, why in runs.skipped.items()},
            **{f"eval.{task}.error": why for task, why in errors.items()}}
    if errors:
        tags["eval.failed_tasks"] = ",".join(errors)
    if any(ctx.cache.skipped_video.values()):
        tags["eval.skipped_video"] = ", ".join(f"{split}: {n} undecodable video(s), zero video features"
                                               for split, n in ctx.cache.skipped_video.items() if n)
    if not text_trained(cfg) and {"retrieval", "vqa"} & set(tasks):
        tags["eval.text"] = ("text not trained (budget.input_weights and target_weights give text 0)"
                             if "text" in cfg.enabled_modalities else "text not trained (modality disabled)")
    result.tags = tags
    info = {"tasks": tasks, "dataset": str(dataset), "baseline": baseline or "", "seconds": seconds,
            "checkpoint": source.get("path", "")}
    with tempfile.TemporaryDirectory() as tmp:
        result.artifacts = write_artifacts(metrics, plots, out_dir or tmp, info)
        if log:
            name = f"eval-baseline-{baseline}" if baseline else "eval"
            own = pretrain_run if not baseline else ""
            result.run_id = log_eval(cfg, metrics, result.artifacts, run_id=own, step=source.get("step", 0),
                                     parent_run_id=pretrain_run if baseline else "", run_name=name, tags=tags)
        if out_dir is None:
            result.artifacts = []  # the temporary copies are gone; they live in MLflow
    return result


@contextmanager
def _local_checkpoint(location: Any) -> Iterator[Path]:
    """A local path for a checkpoint directory or weights file given as a path or a URI; one on
    object storage (a cluster run's ``s3://.../checkpoint_...``) is downloaded to a temp dir that
    is removed once the weights are in memory."""
    text = str(location)
    if storage.is_local(text):
        yield Path(storage.filesystem_and_path(text)[1]) if storage.is_uri(text) else Path(text)
        return
    with tempfile.TemporaryDirectory(prefix="oskar-checkpoint-") as tmp:
        target = Path(tmp) / storage.name(text)
        storage.copy(text, target)
        yield target


def load_model(obj: Any, cfg: OskarConfig | None) -> tuple[Any, OskarConfig, dict[str, Any]]:
    """(model in eval mode, its config, {"path", "run_id", "step"} when loaded from disk)."""
    from ..model import Oskar

    if isinstance(obj, Oskar):
        return obj.eval(), cfg or obj.cfg, {}
    with _local_checkpoint(obj) as path:
        directory = path if path.is_dir() else path.parent
        weights = path if path.is_file() else next(
            (directory / n for n in ("model.safetensors", "weights.safetensors") if (directory / n).is_file()),
            None)
        if weights is None:
            raise FileNotFoundError(f"{obj}: no model.safetensors or weights.safetensors (not a checkpoint)")
        if cfg is None:
            config = directory / "config.yaml"
            if not config.is_file():
                raise FileNotFoundError(f"{obj}: no config.yaml beside the weights; pass --config FILE "
                                        "for a bare weights file")
            cfg = load_config(config)
        model = Oskar(cfg)
        model.load_weights(weights)
        source: dict[str, Any] = {"path": str(obj)}  # where it lives, not the temp copy
        state = directory / "state.json"
        if state.is_file():
            raw = json.loads(state.read_text())
            source.update(run_id=raw.get("run_id", ""), step=int(raw.get("step", 0)))
    return model.eval(), cfg, source


def _check_tasks(tasks: list[str]) -> list[str]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown} (eval.tasks / --tasks; valid: {sorted(TASKS)})")
    return list(dict.fromkeys(tasks))


def _dataset(dataset: str | Path | None, cfg: OskarConfig) -> str:
    """The dataset root as a string: a local directory or an object-store URI."""
    if dataset is None:
        from ..data.resolve import resolve_data

        dataset = resolve_data(cfg).data.path
    root = str(dataset)
    if not storage.is_file(storage.join(root, "manifest.json")):
        raise FileNotFoundError(f"{root}: no manifest.json (create a dataset with `oskar data synth --out DIR`)")
    return root


def _context(model, cfg: OskarConfig, dataset: str, seed: int, progress: bool,
             cache_dir: str | Path | None, views: list[str]) -> EvalContext:
    e = cfg.eval
    # features depend on the weights and the data: key the on-disk cache by both
    where = Path(cache_dir) / "features" / _fingerprint(model, dataset) if cache_dir else None
    cache = FeatureCache(model, dataset, cfg, views, batch_size=e.batch_size, progress=progress, cache_dir=where)
    return EvalContext(model=model, cfg=cfg, dataset=dataset, cache=cache, seed=seed, progress=progress)


def split_tags(ctx: EvalContext, tasks: list[str]) -> dict[str, str]:
    """``eval.split.<split>``: which stored rows each probe split read (stored, or carved: how, how many)."""
    lowshot = tuple(s for s in subsets(ctx.cfg).values() if s != "train") if "lowshot" in tasks else ()
    splits = ("train", "val", "test") + lowshot
    return {f"eval.split.{name}": note for name, note in ctx.cache.plan.describe(splits).items()}


def _fingerprint(model, dataset: str) -> str:
    import hashlib

    digest = hashlib.sha256(storage.read_bytes(storage.join(dataset, "manifest.json")))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class _TaskRuns:
    """What the tasks of one evaluation produced, merged (``eval/<task>/...`` keys, ``eval.<task>.*`` tags)."""

    metrics: dict[str, float] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _run_tasks(ctx: EvalContext, tasks: list[str]) -> _TaskRuns:
    """Every task in isolation: one that raises is recorded (``errors``) and printed, the others still run."""
    out = _TaskRuns()
    for task in tasks:
        start = time.perf_counter()
        torch.manual_seed(ctx.seed)  # each task from the same seed: order-independent results
        try:
            result = TASKS[task](ctx)
        except Exception as err:  # noqa: BLE001 - one task's failure must not lose the others' results
            out.errors[task] = f"{type(err).__name__}: {err}"[:1000]
            out.seconds[task] = round(time.perf_counter() - start, 2)
            print(f"eval {task}: FAILED ({out.errors[task]})", flush=True)
            continue
        out.metrics.update({f"eval/{task}/{k}": float(v) for k, v in result.metrics.items()})
        for key, (low, high) in result.intervals.items():
            out.metrics.update(zip(interval_keys(f"eval/{task}/{key}"), (low, high), strict=True))
        out.notes.update({f"eval.{task}.{key}": note for key, note in result.notes.items()})
        if result.plots:
            out.plots[task] = result.plots
        out.seconds[task] = round(time.perf_counter() - start, 2)
        if result.skipped:
            out.skipped[task] = result.skipped
            print(f"eval {task}: skipped ({result.skipped})", flush=True)
        elif ctx.progress:
            shown = sorted(k for k in result.metrics if not is_interval(k))[:6]
            print(f"eval {task}: {out.seconds[task]:.1f}s  " + "  ".join(
                f"{k}={result.metrics[k]:.3f}" for k in shown), flush=True)
    return out
