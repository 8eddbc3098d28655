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


from .loading import base_path, config_from_dict, config_yaml, load_config, save_config
from .schema import (
    BudgetConfig,
    DataConfig,
    EmaConfig,
    EvalConfig,
    ModelConfig,
    OskarConfig,
    PredictorConfig,
    TrackingConfig,
    TrainConfig,
)
from .validation import validate

__all__ = [
    "BudgetConfig", "DataConfig", "EmaConfig", "EvalConfig", "ModelConfig", "OskarConfig", "PredictorConfig",
    "TrackingConfig", "TrainConfig", "base_path", "config_from_dict", "config_yaml", "load_config", "save_config",
    "validate",
]
