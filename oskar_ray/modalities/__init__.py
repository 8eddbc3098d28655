"""Modality registry: one file per modality, registered on import.

>>> from oskar_ray.modalities import registered_modalities
>>> registered_modalities()
['video', 'skeleton', 'text']
"""

from . import skeleton, text, video  # noqa: F401  (registers the built-ins)
from .base import (
    BUILTIN_MODALITIES,
    Modality,
    ModalityConfig,
    ModalityTokenizer,
    adopt_modalities,
    carried_modalities,
    grouped_scores,
    modality_class,
    register_modality,
    registered_modalities,
    unregister_modality,
)

__all__ = [
    "BUILTIN_MODALITIES",
    "Modality",
    "ModalityConfig",
    "ModalityTokenizer",
    "adopt_modalities",
    "carried_modalities",
    "grouped_scores",
    "modality_class",
    "register_modality",
    "registered_modalities",
    "unregister_modality",
]
