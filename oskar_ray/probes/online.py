"""The online probe: the cheap signal reported during pretraining, a leave-one-out kNN on held-out clips.

Runbook::

    probe = OnlineProbe.from_config(cfg, device)      # None when the data has no labelled val split
    probe(model)  # {"probe/skeleton/knn_top1": .., "probe/fusion/knn_top1": .., "probe/mean": ..}

Every ``eval.online_probe_every`` steps rank 0 encodes a fixed set of
``eval.online_probe_samples`` labelled held-out clips (``data.val_split``,
preprocessed once, eval mode) with the current weights and scores each view by
leave-one-out kNN (cosine, ``eval.online_probe_k`` neighbours, the eval
suite's :func:`~oskar_ray.probes.heads.knn_scores`, its temperature-weighted vote): no training, a few
forward passes. Views (:data:`~oskar_ray.probes.views.ACTION_VIEWS`):
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

from ..metric_names import PROBE_PREFIX
from .heads import knn_scores, topk_accuracy
from .views import ACTION_VIEWS, parse_view


def loo_knn_top1(features: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int) -> float:
    """Leave-one-out kNN accuracy: each row is classified by its ``k`` nearest *other* rows."""
    scores = knn_scores(features, labels, features, n_classes, k, exclude_self=True)
    return topk_accuracy(scores, labels, 1)


class OnlineProbe:
    def __init__(self, batches: list[dict], labels: torch.Tensor, k: int, views: list[str]):
        self.batches, self.labels, self.k, self.views = batches, labels, k, views
        self.n_classes = int(labels.max()) + 1

    @classmethod
    def from_config(cls, cfg, device) -> OnlineProbe | None:
        """The probe set from ``data.val_split``; None without labelled held-out data."""
        from ..data.pipeline import iterate_local
        from ..model import move_batch

        if not cfg.data.path or cfg.eval.online_probe_every <= 0:
            return None
        batches, labels, wanted = [], [], cfg.eval.online_probe_samples
        try:
            for batch in iterate_local(cfg.data.path, cfg.data.val_split, cfg, batch_size=cfg.eval.batch_size,
                                       with_masks=False):
                if "action" not in batch:
                    return None
                batch = _head(batch, wanted - sum(len(x) for x in labels))
                batches.append(move_batch(batch, device))
                labels.append(batch["action"].cpu())
                if sum(len(x) for x in labels) >= wanted:
                    break
        except (FileNotFoundError, KeyError, ValueError):
            return None  # no val split (e.g. an ingested pretrain-only set): no signal
        labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        if len(labels) <= cfg.eval.online_probe_k:
            return None
        return cls(batches, labels, cfg.eval.online_probe_k, cfg.eval.online_probe_views)

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for view in self.views:
            encoder, names = parse_view(ACTION_VIEWS[view])
            if not all(n in model.modalities for n in names):
                continue
            feats = torch.cat([model.encode(b, names, encoder=encoder).float().cpu() for b in self.batches])
            out[f"{PROBE_PREFIX}{view}/knn_top1"] = loo_knn_top1(feats, self.labels, self.k, self.n_classes)
        if out:
            out[f"{PROBE_PREFIX}mean"] = sum(out.values()) / len(out)
        model.train(was_training)
        return out


def _head(batch: dict, n: int) -> dict:
    """The first ``n`` samples of a batch (nested ``present`` included)."""
    if n >= len(batch["action"]):
        return batch
    return {k: ({m: v[:n] for m, v in value.items()} if isinstance(value, dict) else value[:n])
            for k, value in batch.items()}
