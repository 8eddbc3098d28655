"""Baselines on the same protocol: a random-init encoder and a video-only pretraining.

Runbook::

    model, cfg = baseline_model("random", cfg, dataset_dir)       # Oskar(cfg), seeded, untrained
    model, cfg = baseline_model("video_only", cfg, dataset_dir)   # pretrained with skeleton and text off

``video_only`` runs the OSKAR objective single-process (:func:`oskar_ray.train.train`,
the same step as Ray Train) with the *same* budgets, steps, batch size, LR and
seed as ``cfg``, on the same pretraining split, with every modality but video
disabled — so a gap to the full model is the multimodal signal, not compute.
The trained weights are cached per config in ``cache_dir`` when it
``cache_dir`` is given (a second eval reuses it).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from ..config import OskarConfig
from ..modalities import modality_class
from ..model import Oskar

KINDS = ("random", "video_only")


def video_only_config(cfg: OskarConfig) -> OskarConfig:
    """``cfg`` with every modality but video off, its budgets kept where video alone can fill them.

    A config that feeds the *whole* video and predicts only other modalities (``mask_ratio: 0``) leaves
    a video-only run nothing to predict: then the video hides just enough tokens for ``target_tokens``
    and ``input_tokens`` is capped at what stays visible (the nearest feasible budget; printed).
    A per-modality EMA start for video is dropped as well: a config may speed up the video EMA because
    video is never a target there, but the video-only run predicts video, and a teacher that follows
    the student within a few steps gives it nothing to learn from (tiny_pose, seed 0: 17.5 % vs 40 %
    attentive top-1; the weights cache key changes with it, so collapsed weights are not reused)."""
    cfg = copy.deepcopy(cfg)
    for name, modality in cfg.modalities.items():
        modality.enabled = name == "video"
    video = cfg.modalities["video"]
    tokens = modality_class("video")(video).num_tokens
    if round(video.mask_ratio * tokens) < cfg.budget.target_tokens <= tokens:
        before = (video.mask_ratio, cfg.budget.input_tokens)
        video.mask_ratio = cfg.budget.target_tokens / tokens
        cfg.budget.input_tokens = min(cfg.budget.input_tokens, tokens - cfg.budget.target_tokens)
        print(f"video-only baseline: modalities.video.mask_ratio {before[0]} -> {video.mask_ratio:g} and "
              f"budget.input_tokens {before[1]} -> {cfg.budget.input_tokens} (video alone must hide "
              f"budget.target_tokens={cfg.budget.target_tokens} of its {tokens} tokens to predict them)", flush=True)
    for key in ("modality_start", "modality_end", "modality_schedule"):
        if "video" in getattr(cfg.ema, key):
            value = getattr(cfg.ema, key).pop("video")
            print(f"video-only baseline: ema.{key}.video {value} dropped (video is this run's target: its EMA "
                  f"follows ema.start / end / schedule)", flush=True)
    return cfg


def baseline_model(kind: str, cfg: OskarConfig, dataset_dir: str | Path, cache_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[Oskar, OskarConfig]:
    if kind not in KINDS:
        raise ValueError(f"--baseline must be one of {KINDS}, got {kind!r}")
    from ..train import seed_everything

    if kind == "random":
        return scratch_model(cfg, cfg.train.seed), cfg
    seed_everything(cfg.train.seed)
    vcfg = video_only_config(cfg)
    model = Oskar(vcfg)
    weights = _cached_weights(vcfg, cache_dir)
    if weights is not None and weights.is_file():
        model.load_weights(weights)
        return model.eval(), vcfg
    _pretrain(model, vcfg, dataset_dir, progress)
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(weights)
    return model.eval(), vcfg


def scratch_model(cfg: OskarConfig, seed: int) -> Oskar:
    """The model of ``cfg`` at random init drawn from ``seed`` (the random baseline; supervised training's start)."""
    from ..train import seed_everything

    seed_everything(seed)
    return Oskar(cfg).eval()


def _pretrain(model: Oskar, cfg: OskarConfig, dataset_dir: str | Path, progress: bool) -> None:
    from tqdm import tqdm

    from ..data.pipeline import iterate_local
    from ..train import train

    # enough epochs for train.steps batches whatever the split size; the loop stops at train.steps
    batches = iterate_local(dataset_dir, cfg.data.train_split, cfg, cfg.train.batch_size, seed=cfg.train.seed,
                            train=True, epochs=10_000, drop_last=True)
    bar = tqdm(total=cfg.train.steps, desc="video-only pretraining", disable=not progress, leave=False)
    train(cfg, batches, model=model, on_step=lambda step, metrics: bar.update(1))
    bar.close()


def _cached_weights(cfg: OskarConfig, cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256(repr(cfg.to_dict()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"video_only-{key}.safetensors"
