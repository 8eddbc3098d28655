"""Typed configuration: defaults → experiment YAML → ``--set a.b=c`` overrides.

>>> cfg = load_config("experiments/configs/tiny.yaml", ["budget.input_tokens=48"])
>>> cfg.budget.input_tokens
48

Every value is checked at load; a bad one raises ``ValueError`` naming its
dotted field (``budget.input_tokens``, ``modalities.video.mask_ratio`` …).
``modalities`` maps a registered modality name to that modality's own config
dataclass (see ``oskar_ray/modalities``), so a new modality brings its own keys.
``save_config`` writes the resolved config next to every run and checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .modalities import ModalityConfig, modality_class


@dataclass
class ModelConfig:
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    #: "mse" or "l1" between predicted and target features
    loss: str = "mse"


@dataclass
class PredictorConfig:
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    #: "cross": queries self-attend and cross-attend to the fused tokens;
    #: "concat": one self-attention over [fused tokens; queries] (I-JEPA style)
    kind: str = "cross"
    #: one predictor per modality instead of one shared predictor
    per_modality: bool = False


@dataclass
class BudgetConfig:
    input_tokens: int = 64
    target_tokens: int = 32
    input_alpha: float = 1.0
    target_alpha: float = 1.0
    #: share of each sample's target allotment routed away from its input modalities
    cross_modal_share: float = 0.0
    #: a clip-time span that is a target in one modality is not an input in another
    exclusive: bool = False
    #: resolution of clip time used by exclusivity
    time_bins: int = 8


@dataclass
class EmaConfig:
    start: float = 0.996
    end: float = 1.0
    #: "cosine" | "linear" | "constant" from start to end over train.steps
    schedule: str = "cosine"
    #: one target encoder per modality (else one shared target encoder)
    per_modality: bool = True
    #: optional per-modality start momentum (only with per_modality)
    modality_start: dict[str, float] = field(default_factory=dict)


@dataclass
class DataConfig:
    #: dataset directory (manifest.json + Parquet shards) or URI; "" = built-in example stream
    path: str = ""
    train_split: str = "pretrain"
    val_split: str = "val"
    #: "clip" (per-clip mean/std: removes the colour shortcut) or "dataset"
    video_norm: str = "clip"
    augment: bool = True
    shuffle_buffer: int = 256
    #: CPUs per Ray Data preprocessing task (fractions fit 2-core laptops)
    cpus_per_task: float = 0.25
    prefetch_batches: int = 2
    #: size of the built-in benchmark synthesised when ``path`` is empty
    synth_samples: int = 2000


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 30
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    num_workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    #: "fp32" or "bf16" (autocast; GPU)
    precision: str = "fp32"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    #: automatic restarts from the last checkpoint after a worker failure
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    #: torch intra-op threads per worker; 0 leaves torch's default
    threads: int = 0
    output_dir: str = "runs"


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["action", "retrieval", "vqa", "localization", "health"])
    rankme_every: int = 100
    knn_k: int = 20
    probe_epochs: int = 30
    finetune_epochs: int = 3
    batch_size: int = 64
    #: feature std below this for `collapse_patience` evaluations raises the alarm
    collapse_std: float = 1e-3
    collapse_patience: int = 3
    collapse_fatal: bool = False


@dataclass
class TrackingConfig:
    experiment: str = "oskar"
    #: "" → $MLFLOW_TRACKING_URI, else a SQLite store in the working directory
    uri: str = ""
    run_name: str = ""


def _default_modalities() -> dict[str, ModalityConfig]:
    return {name: modality_class(name).config_class() for name in ("video", "skeleton", "text")}


@dataclass
class OskarConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=_default_modalities)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def enabled_modalities(self) -> list[str]:
        return [name for name, m in self.modalities.items() if m.enabled]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"budget.input_tokens": 64, ...}`` — MLflow params, sweep keys."""
        return _flatten(self.to_dict())


# --- loading -------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> OskarConfig:
    """Defaults, then the YAML at ``path`` (if any), then ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> OskarConfig:
    cfg = _build(OskarConfig, {k: v for k, v in raw.items() if k != "modalities"}, "")
    cfg.modalities = _build_modalities(raw.get("modalities"))
    validate(cfg)
    return cfg


def save_config(cfg: OskarConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like section.field=value")
    return key.strip(), yaml.safe_load(text) if text.strip() else ""


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parents[: i + 1])} is a value, cannot set {key}")
        node = child
    node[leaf] = value


def _build_modalities(raw: Any) -> dict[str, ModalityConfig]:
    # the built-ins are always configured (switch one off with enabled: false);
    # a registered extra modality joins by being named
    result = _default_modalities()
    if raw is None:
        return result
    if not isinstance(raw, dict):
        raise ValueError(f"modalities must be a mapping of modality name to settings, got {raw!r}")
    for name, settings in raw.items():
        cls = modality_class(name).config_class
        result[name] = _build(cls, settings or {}, f"modalities.{name}")
    return result


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key {where}{unknown[0]} (valid: {sorted(names)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v, f"{name}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{name}: union-typed config fields are not supported")
    return _coerce_scalar(hint, value, name)


def _coerce_scalar(hint: type, value: Any, name: str) -> Any:
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; users type it that way
        with contextlib.suppress(ValueError):
            value = float(value)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and is_number and float(value).is_integer():
        return int(value)
    if hint is float and is_number:
        return float(value)
    if hint is str and (is_number or isinstance(value, str)):
        return str(value)
    raise ValueError(f"{name} must be {hint.__name__}, got {value!r}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# --- validation ------------------------------------------------------------
def validate(cfg: OskarConfig) -> None:
    _validate_model(cfg)
    _validate_budget(cfg)
    _validate_ema(cfg)
    _validate_train(cfg)
    choices = {"data.video_norm": (cfg.data.video_norm, ("clip", "dataset"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    _positive(cfg, "data.cpus_per_task", "data.shuffle_buffer", "data.prefetch_batches", "data.synth_samples")
    _positive(cfg, "eval.rankme_every", "eval.knn_k", "eval.batch_size", "eval.collapse_patience")


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
    if cfg.predictor.kind not in ("cross", "concat"):
        raise ValueError(f"predictor.kind must be 'cross' or 'concat', got {cfg.predictor.kind!r}")
    if not cfg.enabled_modalities:
        raise ValueError("modalities: at least one modality must be enabled")
    for name, mcfg in cfg.modalities.items():
        modality_class(name)(mcfg).validate(f"modalities.{name}")


def _validate_budget(cfg: OskarConfig) -> None:
    b = cfg.budget
    _positive(cfg, "budget.input_tokens", "budget.target_tokens", "budget.input_alpha")
    _positive(cfg, "budget.target_alpha", "budget.time_bins")
    if not 0.0 <= b.cross_modal_share <= 1.0:
        raise ValueError(f"budget.cross_modal_share must be in [0, 1], got {b.cross_modal_share}")
    visible = masked = 0
    for name in cfg.enabled_modalities:
        mcfg = cfg.modalities[name]
        n = modality_class(name)(mcfg).num_tokens
        n_masked = round(mcfg.mask_ratio * n)
        visible, masked = visible + n - n_masked, masked + n_masked
    if b.target_tokens > masked:
        raise ValueError(
            f"budget.target_tokens ({b.target_tokens}) exceeds the {masked} masked tokens "
            f"the enabled modalities can provide (raise mask_ratio or lower the budget)"
        )
    if b.input_tokens > visible:
        raise ValueError(
            f"budget.input_tokens ({b.input_tokens}) exceeds the {visible} visible tokens "
            f"the enabled modalities can provide (lower mask_ratio or the budget)"
        )


def _validate_ema(cfg: OskarConfig) -> None:
    e = cfg.ema
    for name in ("ema.start", "ema.end"):
        if not 0.0 <= _get(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {_get(cfg, name)}")
    if e.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"ema.schedule must be cosine, linear or constant, got {e.schedule!r}")
    for name, start in e.modality_start.items():
        if name not in cfg.modalities:
            raise ValueError(f"ema.modality_start.{name}: unknown modality (configured: {list(cfg.modalities)})")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"ema.modality_start.{name} must be in [0, 1], got {start}")
    if e.modality_start and not e.per_modality:
        raise ValueError("ema.modality_start needs ema.per_modality=true (one shared target encoder)")


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
    if t.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {t.precision!r}")
