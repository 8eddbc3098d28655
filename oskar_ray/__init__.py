"""OSKAR-Ray: multimodal JEPA-style pretraining (video, skeleton, text) on Ray.

Runbook: ``oskar --help``; the design is docs/design.md, the layers docs/architecture.md.
"""

__version__ = "0.1.0"
