"""Data: SynthAction benchmark, real-format ingestion, the Parquet store and the Ray Data pipeline.

Runbook::

    oskar data synth  --out data/synth --samples 20000          # built-in benchmark
    oskar data ingest --out data/mine --split train --videos clips/ --skeletons skel/ \\
        --captions captions.json --qa qa.json                   # your own data
    # training: oskar_ray.data.pipeline.build_dataset(cfg, "pretrain") / iterate_local(...)

Modules: ``motion`` (3D skeleton actions), ``render`` (stick-figure video),
``language`` (captions, QA), ``synth`` (generator), ``readers/`` (real formats),
``ingest`` (matching + report), ``store`` (manifest + shards), ``tokenizer``,
``preprocess`` (pure batch transform), ``pipeline`` (Ray Data), ``cli``.
Submodules import lazily so ``import oskar_ray.data`` never pulls in Ray.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_dataset": "pipeline", "iter_train_batches": "pipeline", "iterate_local": "pipeline",
    "preprocess_batch": "preprocess", "DatasetMeta": "preprocess", "nest_present": "preprocess",
    "generate": "synth", "SynthSpec": "synth", "ingest": "ingest", "IngestOptions": "ingest",
    "load_manifest": "store", "split_paths": "store", "load_tokenizer": "tokenizer",
    "add_data_commands": "cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'oskar_ray.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
