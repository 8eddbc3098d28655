"""Config validation: every rule, each raising ``ValueError`` that names its dotted field.

Called by ``oskar_ray.config.load_config`` / ``config_from_dict`` after the
defaults → YAML → overrides merge, so no run starts on an invalid config.
"""

from __future__ import annotations

from typing import Any

from ..metric_names import ACTION_PROTOCOLS, ACTION_VIEW_NAMES, EVAL_TASKS, VQA_VIEWS
from ..modalities import BUILTIN_MODALITIES, modality_class
from .schema import OskarConfig


def validate(cfg: OskarConfig) -> None:
    _validate_model(cfg)
    _validate_budget(cfg)
    _validate_ema(cfg)
    _validate_train(cfg)
    choices = {"data.video_norm": (cfg.data.video_norm, ("clip", "dataset")),
               "tracking.relay": (cfg.tracking.relay, ("auto", "always", "never"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    _positive(cfg, "data.cpus_per_task", "data.shuffle_buffer", "data.prefetch_batches", "data.synth_samples")
    _positive(cfg, "data.frame_step", "data.decode_cpus_per_task", "eval.video_segments", "eval.video_views")
    for name in ("crop_scale", "crop_aspect"):
        low_high = getattr(cfg.data, name)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] or (name == "crop_scale" and low_high[1] > 1):
            raise ValueError(f"data.{name} must be [low, high] with 0 < low <= high"
                             f"{' <= 1' if name == 'crop_scale' else ''}, got {low_high}")
    if cfg.data.max_cpus < 0 or 0 < cfg.data.max_cpus < cfg.data.cpus_per_task:
        raise ValueError(f"data.max_cpus must be 0 (uncapped) or at least data.cpus_per_task "
                         f"({cfg.data.cpus_per_task}: one preprocessing task), got {cfg.data.max_cpus}")
    if cfg.data.max_tasks < 0:
        raise ValueError(f"data.max_tasks must be >= 0 (0 = one per core on a single-node Ray, Ray decides on a "
                         f"cluster), got {cfg.data.max_tasks}")
    if cfg.data.max_memory_mb < 0 or 0 < cfg.data.max_memory_mb < 16:
        raise ValueError(f"data.max_memory_mb must be 0 (a window of the shuffle buffer and 8 training batches) or "
                         f"at least 16 (one Ray Data block), got {cfg.data.max_memory_mb}")
    if cfg.data.synth_pretrain_samples < 0:
        raise ValueError(f"data.synth_pretrain_samples must be >= 0 (0 = half of data.synth_samples), "
                         f"got {cfg.data.synth_pretrain_samples}")
    _positive(cfg, "eval.rankme_every", "eval.knn_k", "eval.batch_size", "eval.collapse_patience")
    _positive(cfg, "eval.online_probe_samples", "eval.online_probe_k")
    if cfg.eval.online_probe_every < 0:
        raise ValueError(f"eval.online_probe_every must be >= 0 (0 = off), got {cfg.eval.online_probe_every}")
    added = tuple(m for m in cfg.modalities if m not in BUILTIN_MODALITIES)  # an added modality m: view target:m
    for name, valid in (("online_probe_views", ACTION_VIEW_NAMES + added), ("tasks", EVAL_TASKS),
                        ("action_protocols", ACTION_PROTOCOLS), ("vqa_views", VQA_VIEWS)):
        unknown = [v for v in getattr(cfg.eval, name) if v not in valid]
        if unknown:
            raise ValueError(f"eval.{name}: unknown value {unknown[0]!r} (valid: {', '.join(valid)})")
    for name, valid in (("action_protocols", ACTION_PROTOCOLS), ("vqa_views", VQA_VIEWS)):
        if not getattr(cfg.eval, name):
            raise ValueError(f"eval.{name} is empty (valid: {', '.join(valid)})")
    _validate_splits(cfg)


def _validate_splits(cfg: OskarConfig) -> None:
    e = cfg.eval
    if not 0 < e.val_fraction < 1:
        raise ValueError(f"eval.val_fraction must be in (0, 1) (the share of train carved as val), "
                         f"got {e.val_fraction}")
    if "lowshot" in e.tasks and not e.lowshot_percents:
        raise ValueError("eval.lowshot_percents is empty but eval.tasks has lowshot (e.g. [1, 10])")
    bad = [p for p in e.lowshot_percents if not 0 < p <= 100]
    if bad:
        raise ValueError(f"eval.lowshot_percents: {bad[0]} is not a percentage in (0, 100]")
    _validate_finetune(e)
    names = {"eval.train_split": e.train_split, "data.val_split": cfg.data.val_split, "eval.test_split": e.test_split}
    for key, name in names.items():
        if not name:
            raise ValueError(f"{key} is empty (a stored split name, e.g. train / val / test)")
    if len(set(names.values())) < len(names):
        raise ValueError(f"the probe splits must differ: {', '.join(f'{k}={v}' for k, v in names.items())}")


def _validate_finetune(e) -> None:
    if e.finetune_epochs < 0:
        raise ValueError(f"eval.finetune_epochs must be >= 0 (0: no fine-tuning), got {e.finetune_epochs}")
    if not 1 <= e.finetune_min_steps <= e.finetune_max_steps:
        raise ValueError(f"eval.finetune_min_steps / finetune_max_steps must satisfy 1 <= min <= max, got "
                         f"{e.finetune_min_steps} / {e.finetune_max_steps}")
    for key in ("finetune_batch_size", "finetune_patience", "finetune_min_gain"):
        if getattr(e, key) < 1:
            raise ValueError(f"eval.{key} must be >= 1, got {getattr(e, key)}")
    for key in ("finetune_lr", "supervised_lr"):
        if not getattr(e, key) > 0:
            raise ValueError(f"eval.{key} must be > 0, got {getattr(e, key)}")
    for key, low_open in (("finetune_layer_decay", True), ("finetune_warmup", False), ("finetune_holdout", True)):
        value = getattr(e, key)
        if not (0 < value <= 1 if low_open else 0 <= value < 1):
            raise ValueError(f"eval.{key} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")


def _get(cfg: OskarConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _positive(cfg: OskarConfig, *names: str) -> None:
    for name in names:
        value = _get(cfg, name)
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _validate_model(cfg: OskarConfig) -> None:
    _positive(cfg, "model.dim", "model.depth", "model.heads", "model.mlp_ratio")
    _positive(cfg, "predictor.dim", "predictor.depth", "predictor.heads", "predictor.mlp_ratio")
    for section in ("model", "predictor"):
        dim, heads = _get(cfg, f"{section}.dim"), _get(cfg, f"{section}.heads")
        if dim % heads:
            raise ValueError(f"{section}.dim ({dim}) must be divisible by {section}.heads ({heads})")
    if cfg.model.loss not in ("mse", "l1"):
        raise ValueError(f"model.loss must be 'mse' or 'l1', got {cfg.model.loss!r}")
    if cfg.model.target_norm not in ("layer", "slot"):
        raise ValueError(f"model.target_norm must be 'layer' or 'slot', got {cfg.model.target_norm!r}")
    for field in ("var_weight", "cov_weight", "align_weight"):
        if getattr(cfg.model, field) < 0:
            raise ValueError(f"model.{field} must be >= 0, got {getattr(cfg.model, field)}")
    m = cfg.model
    if len(set(m.align_to)) != len(m.align_to):
        raise ValueError(f"model.align_to names a modality twice: {m.align_to}")
    if m.align_from in m.align_to:
        raise ValueError(f"model.align_from and model.align_to both hold {m.align_from!r}: the term aligns two "
                         f"different modalities")
    if m.align_weight or m.align_weights:  # either one switches a contrast term on
        _validate_alignment(cfg)
    if not 0.0 <= cfg.model.target_stats_momentum < 1.0:
        raise ValueError(f"model.target_stats_momentum must be in [0, 1), got {cfg.model.target_stats_momentum}")
    if cfg.predictor.kind not in ("cross", "concat"):
        raise ValueError(f"predictor.kind must be 'cross' or 'concat', got {cfg.predictor.kind!r}")
    if not cfg.enabled_modalities:
        raise ValueError("modalities: at least one modality must be enabled")
    for name, mcfg in cfg.modalities.items():
        modality_class(name)(mcfg).validate(f"modalities.{name}")


def _validate_alignment(cfg: OskarConfig) -> None:
    m = cfg.model
    if m.align_from not in cfg.enabled_modalities:
        raise ValueError(f"model.align_from must be an enabled modality ({cfg.enabled_modalities}), "
                         f"got {m.align_from!r}")
    if not m.align_to:
        raise ValueError("model.align_to must name at least one modality when a contrast weight is set")
    for name in m.align_to:
        if name not in cfg.enabled_modalities:
            raise ValueError(f"model.align_to must be an enabled modality ({cfg.enabled_modalities}), "
                             f"got {name!r}")
    for name, weight in m.align_weights.items():
        if name not in m.align_to:
            raise ValueError(f"model.align_weights.{name}: {name!r} is not in model.align_to {m.align_to}")
        if weight < 0:
            raise ValueError(f"model.align_weights.{name} must be >= 0, got {weight}")
    if m.align_queue < 0:
        raise ValueError(f"model.align_queue must be >= 0 (past clips kept as negatives), got {m.align_queue}")
    if m.align_temperature <= 0:
        raise ValueError(f"model.align_temperature must be positive, got {m.align_temperature}")


def _validate_budget(cfg: OskarConfig) -> None:
    b = cfg.budget
    _positive(cfg, "budget.input_tokens", "budget.target_tokens", "budget.input_alpha")
    _positive(cfg, "budget.target_alpha", "budget.time_bins")
    if not 0.0 <= b.cross_modal_share <= 1.0:
        raise ValueError(f"budget.cross_modal_share must be in [0, 1], got {b.cross_modal_share}")
    for field_name in ("input_weights", "target_weights"):
        _check_weights(cfg, field_name)
    visible = masked = 0
    for name in cfg.enabled_modalities:  # a weight of 0 keeps a modality off that side: it provides nothing there
        mcfg = cfg.modalities[name]
        n = modality_class(name)(mcfg).num_tokens
        n_masked = round(mcfg.mask_ratio * n)
        visible += (n - n_masked) if b.input_weights.get(name, 1.0) > 0 else 0
        masked += n_masked if b.target_weights.get(name, 1.0) > 0 else 0
    if b.target_tokens > masked:
        raise ValueError(
            f"budget.target_tokens ({b.target_tokens}) exceeds the {masked} masked tokens "
            f"the enabled modalities with a target weight can provide (raise mask_ratio or lower the budget)"
        )
    if b.input_tokens > visible:
        raise ValueError(
            f"budget.input_tokens ({b.input_tokens}) exceeds the {visible} visible tokens "
            f"the enabled modalities with an input weight can provide (lower mask_ratio or the budget)"
        )


def _validate_ema(cfg: OskarConfig) -> None:
    e = cfg.ema
    for name in ("ema.start", "ema.end"):
        if not 0.0 <= _get(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {_get(cfg, name)}")
    if e.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"ema.schedule must be cosine, linear or constant, got {e.schedule!r}")
    for key in ("modality_start", "modality_end", "modality_schedule"):
        for name, value in getattr(e, key).items():
            if name not in cfg.modalities:
                raise ValueError(f"ema.{key}.{name}: unknown modality (configured: {list(cfg.modalities)})")
            if key == "modality_schedule" and value not in ("cosine", "linear", "constant"):
                raise ValueError(f"ema.{key}.{name} must be cosine, linear or constant, got {value!r}")
            if key != "modality_schedule" and not 0.0 <= value <= 1.0:
                raise ValueError(f"ema.{key}.{name} must be in [0, 1], got {value}")
        if getattr(e, key) and not e.per_modality:
            raise ValueError(f"ema.{key} needs ema.per_modality=true (one shared target encoder)")


def _validate_train(cfg: OskarConfig) -> None:
    t = cfg.train
    _positive(cfg, "train.steps", "train.batch_size", "train.lr", "train.num_workers")
    _positive(cfg, "train.cpus_per_worker", "train.checkpoint_every", "train.keep_checkpoints")
    _positive(cfg, "train.log_every")
    if t.batch_size % t.num_workers:
        raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by train.num_workers ({t.num_workers})")
    for name in ("train.max_failures", "train.min_lr", "train.warmup_steps", "train.weight_decay",
                 "train.weight_decay_end", "train.grad_clip", "train.threads"):
        if _get(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {_get(cfg, name)}")
    for name in ("train.beta1", "train.beta2"):
        if not 0.0 <= _get(cfg, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {_get(cfg, name)}")
    if t.precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"train.precision must be 'fp32', 'bf16' or 'auto', got {t.precision!r}")


def _check_weights(cfg: OskarConfig, field_name: str) -> None:
    weights = getattr(cfg.budget, field_name)
    for name, weight in weights.items():
        if name not in cfg.modalities:
            raise ValueError(f"budget.{field_name}.{name}: unknown modality (configured: {list(cfg.modalities)})")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"budget.{field_name}.{name} must be a number >= 0, got {weight!r}")
    if weights and not any(weights.get(n, 1.0) > 0 for n in cfg.enabled_modalities):
        raise ValueError(f"budget.{field_name}: every enabled modality has weight 0")
