"""The online probe: the cheap signal reported during pretraining, a leave-one-out kNN on held-out clips.

Runbook::

    probe, why_off = OnlineProbe.from_config(cfg, device)   # (None, reason) without labelled held-out clips
    probe(model)  # {"probe/skeleton/knn_top1": .., "probe/fusion/knn_top1": .., "probe/mean": ..}

Every ``eval.online_probe_every`` steps rank 0 encodes a fixed set of
``eval.online_probe_samples`` labelled held-out clips (``data.val_split``, or a
seeded, per-class carve of ``eval.train_split`` when the dataset has no
validation split: :func:`held_out_source`; preprocessed once, eval mode) with
the current weights and scores each view by leave-one-out kNN (cosine,
``eval.online_probe_k`` neighbours, the eval suite's
:func:`~oskar_ray.probes.heads.knn_scores`, its temperature-weighted vote): no
training, a few forward passes. Without labelled held-out clips the probe is
off and :func:`unavailable_reason` says why (a sweep whose scheduler ranks on
it refuses to start with that reason). Views (:data:`~oskar_ray.probes.views.ACTION_VIEWS`):
``eval.online_probe_views`` among ``video`` / ``skeleton`` (target encoders) and
``fusion`` (fusion encoder over video + skeleton), those the model has;
``probe/mean`` averages them. Cost: one forward pass of each view over the probe
set (200 clips x 3 views ~ 5 s on one busy CPU thread, ~6 tiny training steps).

Why this signal: ASHA needs a number that ranks trials like the final
downstream probe does, early. The latent loss does not (its scale depends on
the token budgets and targets being compared); a kNN on the same pooled
features the final probes use does — ``experiments/bench_sweep.py`` measures
the rank correlation.
"""

from __future__ import annotations

import torch

from ..data.splits import SplitPlan, SplitSource, stored_labels
from ..metric_names import PROBE_PREFIX
from .heads import knn_scores, topk_accuracy
from .views import action_views, parse_view


def loo_knn_top1(features: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int) -> float:
    """Leave-one-out kNN accuracy: each row is classified by its ``k`` nearest *other* rows."""
    scores = knn_scores(features, labels, features, n_classes, k, exclude_self=True)
    return topk_accuracy(scores, labels, 1)


class OnlineProbe:
    def __init__(self, batches: list[dict], labels: torch.Tensor, k: int, views: list[str]):
        self.batches, self.labels, self.k, self.views = batches, labels, k, views
        self.view_of = action_views(views)  # an added modality's view is named after it
        self.n_classes = int(labels.max()) + 1

    @classmethod
    def from_config(cls, cfg, device) -> tuple[OnlineProbe | None, str]:
        """The probe over held-out labelled clips, or None and the reason it is off."""
        from ..data.pipeline import iterate_local
        from ..model import move_batch

        if cfg.eval.online_probe_every <= 0:
            return None, "eval.online_probe_every is 0"
        source, reason = _held_out(cfg)
        if reason:
            return None, reason
        batches, labels, wanted = [], [], cfg.eval.online_probe_samples
        for batch in iterate_local(cfg.data.path, source.stored, cfg, batch_size=cfg.eval.batch_size,
                                   with_masks=False, rows=source.rows):
            batch = _rows(batch, batch["action"] >= 0)  # unlabelled clips (-1) cannot vote
            batch = _rows(batch, slice(0, wanted - sum(len(x) for x in labels)))
            if not len(batch["action"]):
                continue
            batches.append(move_batch(batch, device))
            labels.append(batch["action"].cpu())
            if sum(len(x) for x in labels) >= wanted:
                break
        return cls(batches, torch.cat(labels), cfg.eval.online_probe_k, cfg.eval.online_probe_views), ""

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for view in self.views:
            encoder, names = parse_view(self.view_of[view])
            if not all(n in model.modalities for n in names):
                continue
            feats = torch.cat([model.encode(b, names, encoder=encoder).float().cpu() for b in self.batches])
            out[f"{PROBE_PREFIX}{view}/knn_top1"] = loo_knn_top1(feats, self.labels, self.k, self.n_classes)
        if out:
            out[f"{PROBE_PREFIX}mean"] = sum(out.values()) / len(out)
        model.train(was_training)
        return out


def _rows(batch: dict, index) -> dict:
    """The samples of a batch at ``index`` (a boolean mask or a slice); nested ``present`` included."""
    return {k: ({m: v[index] for m, v in value.items()} if isinstance(value, dict) else value[index])
            for k, value in batch.items()}


def held_out_source(cfg) -> SplitSource | None:
    """The held-out clips of pretraining-time checks: the dataset's validation split, or one carved from its
    labelled train split (:class:`~oskar_ray.data.splits.SplitPlan`, as the eval suite carves it); None if
    neither exists."""
    plan = SplitPlan.from_config(cfg.data.path, cfg)
    return plan.source("val") if plan.has("val") else None


def unavailable_reason(cfg) -> str:
    """Why the online probe cannot run on this dataset ("" if it can): no held-out split, no labels, too few."""
    return _held_out(cfg)[1]


def _held_out(cfg) -> tuple[SplitSource | None, str]:
    """The probe's held-out clips and "", or None and why there are none usable (one manifest and label read)."""
    if not cfg.data.path:
        return None, "no dataset (data.path is empty)"
    plan = SplitPlan.from_config(cfg.data.path, cfg)
    if not plan.has("val"):
        splits = ", ".join(sorted(plan.stored))
        return None, (f"{cfg.data.path}: no split {cfg.data.val_split!r} and no {cfg.eval.train_split!r} split "
                      f"to carve one from (splits: {splits})")
    source = plan.source("val")
    labels = stored_labels(cfg.data.path, source.stored)
    labels = labels if source.rows is None else labels[source.rows]
    labelled = int((labels >= 0).sum())
    if labelled <= cfg.eval.online_probe_k:
        return None, (f"{cfg.data.path}: the held-out clips ({source.note}) carry {labelled} action labels; the "
                      f"kNN probe needs more than eval.online_probe_k={cfg.eval.online_probe_k}")
    return source, ""
