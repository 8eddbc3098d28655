"""What a resumed pretraining may change: ``oskar pretrain --resume CK --set key=value``.

Runbook::

    cfg, changes = resume_config("runs/x/checkpoint_000003", overrides=["train.steps=600"])
    changes   # {"train.steps": (300, 600)}: recorded on the run (tag resume.changes) and printed

A resumed run starts from the checkpoint's own resolved config; ``--config``
(another YAML) and ``--set`` are applied on top of it. Keys that only say how
long to go on, how often to log, checkpoint and evaluate may change
(:data:`SAFE_KEYS`, :data:`SAFE_PREFIXES`). The schedules are functions of
``step / train.steps``: a longer ``train.steps`` re-places the run on its LR and
EMA curves at the resume step (a warm restart: the LR steps up, the momentum down). Anything else
(model shape, budgets, data, learning rate, seed …) would make the checkpoint a
different experiment, and is refused with the keys named — never dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import storage
from ..config import OskarConfig, load_config

#: keys a resumed run may change
SAFE_KEYS = frozenset({
    "train.steps", "train.min_lr", "train.weight_decay_end", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_failures", "train.threads", "train.output_dir",
    "tracking.run_name", "tracking.relay",
})
#: key prefixes a resumed run may change (evaluation settings)
SAFE_PREFIXES = ("eval.",)


def resume_config(checkpoint: str | Path, config: str | Path | None = None,
                  overrides: list[str] | None = None) -> tuple[OskarConfig, dict[str, tuple[Any, Any]]]:
    """The config a resume of ``checkpoint`` runs with, and what differs from the checkpoint's (key: old, new)."""
    saved_yaml = storage.local_file(storage.join(str(checkpoint), "config.yaml"))
    saved = load_config(saved_yaml)
    wanted = load_config(config or saved_yaml, overrides or [])
    _same_dataset(saved, wanted)
    before, after = saved.flat(), wanted.flat()
    changes = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    unsafe = [k for k in changes if not safe_to_change(k)]
    if unsafe:
        listed = describe({k: changes[k] for k in unsafe})
        raise ValueError(f"--resume {checkpoint}: these settings differ from the checkpoint's config and cannot "
                         f"change mid-run ({listed}). A resume may change {', '.join(sorted(SAFE_KEYS))} and "
                         f"eval.*; start a new run (without --resume) for the rest")
    return wanted, changes


def _same_dataset(saved: OskarConfig, wanted: OskarConfig) -> None:
    """A checkpoint stores its *resolved* ``data.path`` (absolute; the built-in benchmark's directory when the
    YAML said ""): a YAML naming the same data — "" or the same path, relative — is no change."""
    path = wanted.data.path
    if not path or storage.resolve(path) == storage.resolve(saved.data.path):
        wanted.data.path = saved.data.path


def safe_to_change(key: str) -> bool:
    return key in SAFE_KEYS or key.startswith(SAFE_PREFIXES)


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
