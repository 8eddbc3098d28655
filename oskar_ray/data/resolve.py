"""The dataset a config trains on: ``data.path``, or the built-in benchmark synthesised on first use.

Runbook::

    cfg = resolve_data(load_config("experiments/configs/tiny.yaml"))   # a copy; cfg.data.path now set
    cfg.data.path   # "data/synthaction-16x32x32-n2000-p40000" (local), or $OSKAR_STORAGE/data/... on a cluster

An empty ``data.path`` names the built-in SynthAction benchmark sized by the
config (frames, resolution, joints, ``data.synth_samples`` /
``synth_pretrain_samples``): generated into ``data/<name>`` once, and uploaded
to the shared storage root when that is object storage, so every node reads it.
"""

from __future__ import annotations

import copy
from pathlib import Path

from .. import storage
from ..config import OskarConfig
from .synth import SynthSpec, generate, split_sizes


def resolve_data(cfg: OskarConfig) -> OskarConfig:
    """A copy of ``cfg`` whose ``data.path`` points at a dataset, synthesised if needed."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.path:
        cfg.data.path = storage.resolve(cfg.data.path)
        if not storage.is_file(storage.join(cfg.data.path, "manifest.json")):
            raise FileNotFoundError(f"data.path={cfg.data.path}: no manifest.json there "
                                    f"(create one with `oskar data synth --out DIR`)")
        return cfg

    video, skeleton = cfg.modalities["video"], cfg.modalities["skeleton"]
    pretrain = cfg.data.synth_pretrain_samples
    name = f"synthaction-{video.frames}x{video.height}x{video.width}-n{cfg.data.synth_samples}" + \
        (f"-p{pretrain}" if pretrain else "")
    root = (Path("data") / name).resolve()
    if not (root / "manifest.json").is_file():
        sizes = split_sizes(cfg.data.synth_samples, pretrain)
        print(f"built-in benchmark not found: synthesising {sum(sizes.values())} clips "
              f"({', '.join(f'{k} {v}' for k, v in sizes.items())}) into {root}", flush=True)
        spec = SynthSpec(samples=cfg.data.synth_samples, pretrain_samples=pretrain, seed=0, frames=video.frames,
                         height=video.height, width=video.width, joints=skeleton.joints)
        generate(spec, root)
    cfg.data.path = str(root)
    shared = storage.storage_root()
    if shared and not storage.is_local(shared):
        # a cluster: workers on other nodes read the benchmark from object storage, not this disk
        cfg.data.path = storage.join(shared, "data", name)
        if not storage.is_file(storage.join(cfg.data.path, "manifest.json")):
            print(f"uploading the built-in benchmark to {cfg.data.path}", flush=True)
            storage.copy(root, cfg.data.path)
    return cfg
