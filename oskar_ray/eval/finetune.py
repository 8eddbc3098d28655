"""End-to-end fine-tuning, and supervised training from scratch, on one protocol for every view.

Runbook::

    res = finetune(model, cache, "target:video", cfg, train_split="train", n_classes=10)
    res.top1, res.best_step, res.stop_top1         # test top-1; the step early stopping kept; its carve score
    res = finetune(random_model, random_cache, "fusion:video+skeleton", cfg, train_split="train_10pct",
                   n_classes=10, from_scratch=True)   # the supervised-from-scratch baseline at 10 % labels

The protocol (docs/design.md, "Fine-tuning and the supervised baseline"):

1. The labelled clips of ``train_split`` are split per class into a fit part and an early-stopping carve
   (``eval.finetune_holdout``, seeded, at least one clip per class that has two); a subset with one clip per
   class has nothing to carve, so then ``val`` decides (recorded as ``stop_split``).
2. The head starts as the frozen linear probe of the fit part (learning rate x weight decay chosen on ``val``,
   as for the frozen probe) behind a fixed standardisation with the fit part's feature moments: at step 0
   the network *is* that probe, and features whose scale is 0.003 (a target encoder's) train as well as unit
   ones. A head on raw features barely moved: 46 % against the frozen probe's 100 % (issue 30).
3. AdamW for ``steps`` = ``eval.finetune_epochs`` passes over the fit part, clamped to
   [``finetune_min_steps``, ``finetune_max_steps``]: the schedule follows the label count, not an epoch count
   (ten clips take as many steps as they need, not three); linear warm-up, then cosine decay;
   layer-wise learning-rate decay (``finetune_layer_decay`` per block below the head).
4. Every ``steps // 10`` steps the carve is scored; the best step (step 0 included) is kept — a gain counts
   when ``finetune_min_gain`` (2) more carve clips are right, one clip is noise — and training stops after
   ``finetune_patience`` scores without a gain.
5. The carve only chose the step count: the network is trained again from the frozen linear probe of *all*
   the labelled clips for that many steps of the same schedule (a carve of 10 % of 52 clips is 13 of them,
   too many to leave out: fusion at 10 % labels read 67 % instead of the probe's 75.5 % without this step).
   Zero steps is exactly the frozen linear probe, so fine-tuning departs from it only where the carve saw a
   gain. Where ``val`` decides (nothing carved) the best weights of the one run are kept.

``from_scratch``: the same schedule with every layer at the full learning rate (no layer decay: nothing
pretrained to preserve) on a randomly initialised encoder — the supervised baseline.
The model passed in is never modified (its encoder is deep-copied).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.pipeline import iterate_local
from ..data.splits import SplitSource, stratified_sample
from ..model.oskar import pool_by_modality
from ..probes.heads import ProbeResult, fit_linear, topk_accuracy
from ..probes.views import parse_view
from .features import FeatureCache, iterate_batches, to_device


@dataclass(frozen=True)
class FinetuneRecipe:
    steps: int
    batch_size: int
    lr: float
    layer_decay: float
    warmup_steps: int
    weight_decay: float
    eval_every: int
    patience: int
    min_gain: int = 1

    @classmethod
    def sized(cls, e, n_fit: int, from_scratch: bool = False) -> FinetuneRecipe:
        """The schedule for ``n_fit`` labelled clips under the eval config ``e``."""
        batch = max(1, min(e.finetune_batch_size, n_fit))
        steps = math.ceil(e.finetune_epochs * n_fit / batch)
        steps = min(max(steps, e.finetune_min_steps), e.finetune_max_steps)
        return cls(steps=steps, batch_size=batch, lr=e.supervised_lr if from_scratch else e.finetune_lr,
                   layer_decay=1.0 if from_scratch else e.finetune_layer_decay,
                   warmup_steps=round(e.finetune_warmup * steps), weight_decay=0.05,
                   eval_every=max(1, steps // 10), patience=e.finetune_patience, min_gain=e.finetune_min_gain)

    def lr_at(self, step: int) -> float:
        """Multiplier of the peak learning rate before optimisation step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class FinetuneResult(ProbeResult):
    best_step: int = 0
    steps_run: int = 0
    stop_top1: float = float("nan")
    stop_split: str = ""
    n_fit: int = 0


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed moments (the linear probe's), so the head sees unit-scale features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1).float())
        self.register_buffer("std", std.reshape(1, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FineTuned(nn.Module):
    """A copy of the view's encoder, pooled as the frozen features are, then standardisation and a linear head."""

    def __init__(self, model, view: str, head: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        encoder, names = parse_view(view)
        self.names = tuple(n for n in model.modalities if n in names)
        source = model.target_encoders[names[0]] if encoder == "target" else model.fusion_encoder
        self.encoder = copy.deepcopy(source).requires_grad_(True)
        self.sizes = [model.modalities[n].num_tokens for n in self.names]
        self.standardize = Standardize(mean, std)
        self.head = copy.deepcopy(head).requires_grad_(True)
        self._valid = model._valid  # presence-aware token validity, a pure function of the batch

    def forward(self, batch: dict) -> torch.Tensor:
        valid = self._valid(batch, self.names)
        tokens = self.encoder(self.encoder.tokenize(batch, self.names), valid)
        return self.head(self.standardize(pool_by_modality(tokens, valid, self.sizes)))

    def param_groups(self, lr: float, layer_decay: float) -> list[dict]:
        """Head at ``lr``; encoder block i of depth at ``lr * layer_decay ** (depth - i)``, tokenizers lowest."""
        blocks = self.encoder.transformer.blocks
        depth = len(blocks)
        groups = [{"params": list(self.head.parameters()), "lr": lr},
                  {"params": list(self.encoder.transformer.norm.parameters()), "lr": lr * layer_decay},
                  {"params": list(self.encoder.tokenizers.parameters()), "lr": lr * layer_decay ** (depth + 1)}]
        groups += [{"params": list(block.parameters()), "lr": lr * layer_decay ** (depth - i)}
                   for i, block in enumerate(blocks)]
        for group in groups:
            group["peak_lr"] = group["lr"]
        return groups


def finetune(model, cache: FeatureCache, view: str, cfg, *, train_split: str, n_classes: int,
             test_split: str = "test", seed: int = 0, progress: bool = True,
             from_scratch: bool = False) -> FinetuneResult:
    """Fine-tune ``view`` of ``model`` on ``train_split``'s labels; top-1/top-5 on ``test_split``.
    ``cache`` holds ``model``'s frozen features (they start the head)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    fit, stop, stop_split = _carve(cache, view, train_split, cfg.eval, seed)
    labelled = np.union1d(fit, stop) if stop_split == "carve" else fit
    source = cache.plan.source(train_split)
    rows = source.rows if source.rows is not None else np.arange(len(cache.get(train_split, view)))
    recipe = FinetuneRecipe.sized(cfg.eval, len(fit), from_scratch)
    desc = f"{'supervised' if from_scratch else 'fine-tune'} {view}"
    net = _network(model, cache, view, train_split, fit, n_classes, seed, device)
    stop_source = SplitSource(source.stored, rows[stop], "") if stop_split == "carve" else stop
    best_step, steps_run, stop_top1 = _train(net, recipe, cache, cfg, SplitSource(source.stored, rows[fit], ""),
                                             stop_source, seed, progress, desc)
    if stop_split == "carve":
        # the carve chose how many steps; the network is then trained on every label for that many steps of the
        # same schedule, from the frozen linear probe of all of them: 0 steps is exactly that probe
        net = _network(model, cache, view, train_split, labelled, n_classes, seed, device)
        _train(net, recipe, cache, cfg, SplitSource(source.stored, rows[labelled], ""), None, seed, progress,
               desc + " (all labels)", stop_at=best_step)
    logits, y = _predict(net, cache, cfg, cache.plan.source(test_split), device)
    return FinetuneResult(topk_accuracy(logits, y, 1), topk_accuracy(logits, y, 5), logits, best_step=best_step,
                          steps_run=steps_run, stop_top1=stop_top1, stop_split=stop_split, n_fit=len(labelled),
                          lr=recipe.lr)


def _network(model, cache: FeatureCache, view: str, train_split: str, positions: np.ndarray, n_classes: int,
             seed: int, device: torch.device) -> FineTuned:
    """The view's encoder behind the frozen linear probe of the clips at ``positions`` (LR x weight decay on
    val, as the frozen probe chooses them)."""
    feats, val = cache.get(train_split, view), cache.get("val", view)
    keep_val = val.labels["action"] >= 0
    probe = fit_linear(feats.pooled[positions], feats.labels["action"][positions], val.pooled[keep_val],
                       val.labels["action"][keep_val], n_classes, seed)
    return FineTuned(model, view, probe.head, probe.mean, probe.std).to(device)


def _carve(cache: FeatureCache, view: str, train_split: str, e, seed: int):
    """(fit positions, stop positions or the val SplitSource, which split stops) within the split's features."""
    labels = cache.get(train_split, view).labels["action"].numpy()
    labelled = np.flatnonzero(labels >= 0)
    if not len(labelled):
        raise ValueError(f"split {train_split!r} has no action labels: fine-tuning needs labelled clips")
    stop = stratified_sample(labels, labelled, e.finetune_holdout, seed + 2, keep_one=True)
    if len(stop) < 2 * e.finetune_min_gain:
        # one clip per class leaves nothing to carve without emptying a class, and a carve smaller than two
        # gains could never register one: val decides
        return labelled, cache.plan.source("val"), "val"
    return np.setdiff1d(labelled, stop), stop, "carve"


def _train(net: FineTuned, recipe: FinetuneRecipe, cache: FeatureCache, cfg, fit: SplitSource,
           stop: SplitSource | None, seed: int, progress: bool, desc: str,
           stop_at: int | None = None) -> tuple[int, int, float]:
    """Optimise, scoring ``stop`` every ``eval_every`` steps; loads the best weights; (best step, steps run,
    best stop top-1). Without ``stop``: ``stop_at`` steps of the schedule, no scoring."""
    device = next(net.parameters()).device
    opt = torch.optim.AdamW(net.param_groups(recipe.lr, recipe.layer_decay), weight_decay=recipe.weight_decay)
    if stop is None:
        last = _optimise(net, opt, recipe, cache, cfg, fit, seed, progress, desc, until=lambda step: step >= stop_at)
        return last, last, float("nan")
    best = (_score(net, cache, cfg, stop, device)[0], 0, copy.deepcopy(net.state_dict()))
    since_best = 0

    def evaluate(step: int) -> bool:
        """Score the carve after ``step``; whether to stop (patience spent)."""
        nonlocal best, since_best
        if step % recipe.eval_every and step != recipe.steps:
            return False
        score, n_scored = _score(net, cache, cfg, stop, device)
        # a gain counts when at least finetune_min_gain more held-out clips are right: one clip flipping is the
        # carve's noise (fusion, 100 % labels: 51 / 52 against 50 / 52 chose 14 steps that cost 2.5 test points)
        if score * n_scored >= best[0] * n_scored + recipe.min_gain - 1e-6:
            best, since_best = (score, step, copy.deepcopy(net.state_dict())), 0
        else:
            since_best += 1
        return since_best >= recipe.patience

    last = _optimise(net, opt, recipe, cache, cfg, fit, seed, progress, desc, after_step=evaluate)
    net.load_state_dict(best[2])
    return best[1], last, best[0]


def _optimise(net: FineTuned, opt, recipe: FinetuneRecipe, cache: FeatureCache, cfg, fit: SplitSource, seed: int,
              progress: bool, desc: str, until=None, after_step=None) -> int:
    """Steps of the schedule on ``fit`` (training preprocessing) until ``recipe.steps``, ``until(step)`` or
    ``after_step(step)`` says stop; returns the steps taken."""
    device = next(net.parameters()).device
    step = 0
    drop_last = len(fit.rows) > recipe.batch_size  # every step a full batch, where there is one
    per_epoch = len(fit.rows) // recipe.batch_size if drop_last else 1
    batches = iterate_local(cache.root, fit.stored, cfg, recipe.batch_size, seed=seed, train=True,
                            epochs=math.ceil(recipe.steps / per_epoch) + 1, with_masks=False, rows=fit.rows,
                            drop_last=drop_last)
    bar = tqdm(total=recipe.steps, desc=desc, disable=not progress, leave=False)
    for batch in batches:
        if step >= recipe.steps or (until is not None and until(step)):
            break
        net.train()
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * recipe.lr_at(step)
        batch = to_device(batch, device)
        opt.zero_grad()
        F.cross_entropy(net(batch), batch["action"]).backward()
        opt.step()
        step += 1
        bar.update(1)
        if after_step is not None and after_step(step):
            break
    bar.close()
    return step


def _predict(net: FineTuned, cache: FeatureCache, cfg, source: SplitSource,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the labelled clips of ``source`` (eval preprocessing; an encoded video's logits
    averaged over the clips the frozen features average over)."""
    net.eval()
    clips, expand = cache.clip_expansion(source.stored)
    logits, labels = [], []
    with torch.no_grad():
        for batch, _ in iterate_batches(cache.root, source, cfg, cache.batch_size, expand=expand):
            batch = to_device(batch, device)
            logits.append(net(batch).float().cpu())
            labels.append(batch["action"].cpu())
    out, y = torch.cat(logits), torch.cat(labels)
    out, y = out.view(len(out) // clips, clips, -1).mean(1), y[::clips]
    return out[y >= 0], y[y >= 0]


def _score(net: FineTuned, cache: FeatureCache, cfg, source: SplitSource, device: torch.device) -> tuple[float, int]:
    """(top-1, clips scored) on ``source``."""
    logits, y = _predict(net, cache, cfg, source, device)
    return topk_accuracy(logits, y, 1), len(y)
