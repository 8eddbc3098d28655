"""What every evaluation task receives: the frozen model, the data, the feature cache, the knobs.

Tasks are functions ``run(ctx) -> TaskResult``; ``TaskResult.metrics`` keys are
relative (``video/linear/top1``) and the API prefixes ``eval/<task>/``;
``TaskResult.plots`` carries what :mod:`oskar_ray.eval.artifacts` draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..data import store
from ..data.splits import stored_labels
from .features import FeatureCache
from .intervals import wilson


@dataclass
class EvalContext:
    model: Any
    cfg: Any
    dataset: str  # local directory or object-store URI
    cache: FeatureCache
    seed: int = 0
    progress: bool = True
    #: (view, protocol, train split) -> its result, shared by the tasks of one evaluation
    results: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    @cached_property
    def scratch(self) -> tuple[Any, FeatureCache]:
        """The same architecture at random init (seeded) and its feature cache: the supervised baseline's start."""
        from ..probes.views import action_views
        from .baselines import scratch_model

        model = scratch_model(self.cfg, self.seed).to(next(self.model.parameters()).device)
        views = [v for v in self.cache.views if v in action_views(self.cfg.enabled_modalities).values()]
        cache = FeatureCache(model, self.dataset, self.cfg, views, batch_size=self.cfg.eval.batch_size,
                             progress=self.progress, plan=self.cache.plan)
        return model, cache

    # eval settings come from the config: one source of truth
    @property
    def probe_epochs(self) -> int:
        return self.cfg.eval.probe_epochs

    @property
    def finetune_epochs(self) -> float:
        return self.cfg.eval.finetune_epochs

    @property
    def knn_k(self) -> int:
        return self.cfg.eval.knn_k

    @property
    def batch_size(self) -> int:
        return self.cfg.eval.batch_size

    @cached_property
    def manifest(self) -> dict:
        return store.load_manifest(self.dataset)

    def vocab(self, name: str) -> list[str]:
        vocab = self.manifest.get("vocab", {}).get(name)
        if not vocab:
            raise ValueError(f"{self.dataset}/manifest.json: vocab.{name} is missing or empty")
        return list(vocab)

    def has_split(self, split: str) -> bool:
        """Whether the logical split can be served: stored, or carved (``val``, low-shot subsets) from train."""
        return self.cache.plan.has(split)

    def require_split(self, split: str, task: str) -> None:
        if not self.has_split(split):
            stored = self.cache.plan.names.get(split, split)
            raise ValueError(f"{self.dataset}/manifest.json: task {task!r} needs split {stored!r} "
                             f"(splits: {sorted(self.manifest.get('splits', {}))})")

    def require_labels(self, split: str, task: str) -> None:
        """The split exists and some of its rows carry an action label (a probe cannot learn from none)."""
        self.require_split(split, task)
        source = self.cache.plan.source(split)
        labels = stored_labels(self.dataset, source.stored)
        labels = labels if source.rows is None else labels[source.rows]
        if not bool((labels >= 0).any()):
            raise ValueError(f"{self.dataset}: task {task!r} needs action labels, but split {source.stored!r} "
                             f"({split}: {source.note}) has none among its {len(labels)} rows")


@dataclass
class TaskResult:
    metrics: dict[str, float] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)
    #: why the task did not run (the model lacks a modality it needs); logged as a tag, printed
    skipped: str = ""
    #: metric -> its 95 % interval (:mod:`oskar_ray.eval.intervals`), logged as ``<metric>_ci95_lo / _hi``
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: tags the task records (``eval.<task>.<key>``): how a subset was drawn, which split stopped training
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, value: float, *, n: int | None = None,
            interval: tuple[float, float] | None = None) -> None:
        """A metric with its 95 % interval: Wilson when it is a proportion over ``n`` test items, else given."""
        self.metrics[key] = float(value)
        if n is not None:
            interval = wilson(float(value), n)
        if interval is not None:
            self.intervals[key] = (float(interval[0]), float(interval[1]))


def text_trained(cfg) -> bool:
    """Whether the recipe feeds text in or predicts it: with both budget weights 0 no caption is ever seen,
    the text tokenizer keeps its initial weights and the text target encoder only follows (by EMA) a fusion
    encoder trained on the other modalities."""
    if "text" not in cfg.enabled_modalities:
        return False
    b = cfg.budget
    return b.input_weights.get("text", 1.0) > 0 or b.target_weights.get("text", 1.0) > 0
