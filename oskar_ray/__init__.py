"""OSKAR-Ray: multimodal JEPA-style pretraining (video, skeleton, text) on Ray.

Runbook: ``oskar --help``; the design contract is in the repository README.
"""

__version__ = "0.1.0"
