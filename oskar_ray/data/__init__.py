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
