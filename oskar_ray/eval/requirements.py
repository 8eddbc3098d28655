"""What each downstream task needs of a dataset, checked from its ``manifest.json`` before anything runs.

Runbook::

    problems = unservable(["action", "vqa"], "data/mine", cfg)   # {"vqa": "no question-answer annotations ..."}

A sweep refuses its eval tasks up front with these reasons (``oskar_ray.tune.runner``): finding out that a
dataset has no QA annotations after six trials have pretrained wastes the sweep. The tasks themselves still
check what they read (``EvalContext.require_split``); this is the cheap summary of the same needs. Splits are
logical (:class:`oskar_ray.data.splits.SplitPlan`): ``val`` is served by a stored split or carved from train.
"""

from __future__ import annotations

from ..data import store
from ..data.splits import SplitPlan

#: splits every probe-based task reads (hyper-parameters chosen on val, scores on test)
PROBE_SPLITS = ("train", "val", "test")
#: task -> (splits it reads, manifest vocabularies it needs). Captions leave no trace in the manifest: a
#: dataset without them fails inside the retrieval task, which records the error on the run.
NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "action": (PROBE_SPLITS, ("actions",)),
    "lowshot": (PROBE_SPLITS, ("actions",)),
    "localization": (("untrimmed",), ("actions",)),
    "retrieval": (PROBE_SPLITS, ()),
    "vqa": (PROBE_SPLITS, ("answers", "question_types")),
    "health": (("test",), ()),
    "robustness": (PROBE_SPLITS, ("actions",)),
}
#: task -> the splits whose rows must carry temporal segments (manifest ``has_segments``)
SEGMENT_SPLITS: dict[str, tuple[str, ...]] = {"localization": ("untrimmed",)}
#: what each vocabulary comes from, for the message
VOCAB_SOURCE = {"actions": "action labels", "answers": "question-answer annotations (e.g. --qa at ingest)",
                "question_types": "question-answer annotations (e.g. --qa at ingest)"}


def unservable(tasks: list[str], dataset: str, cfg=None) -> dict[str, str]:
    """{task: why this dataset cannot serve it} for the tasks it cannot serve (empty: all fine).

    ``cfg`` names the probe splits (``eval.train_split``, ``data.val_split``, ``eval.test_split``); without
    it the defaults train / val / test."""
    manifest = store.load_manifest(dataset)
    plan = SplitPlan.from_config(dataset, cfg) if cfg is not None else SplitPlan(dataset)
    vocab = manifest.get("vocab", {})
    out: dict[str, str] = {}
    for task in tasks:
        need_splits, need_vocab = NEEDS[task]
        missing = [plan.names.get(s, s) for s in need_splits if not plan.has(s)]
        stored = ", ".join(sorted(plan.stored)) or "none"
        reasons = ([f"no split {', '.join(missing)} (splits: {stored})"] if missing else []) + \
            [f"manifest vocab.{v} is empty (no {VOCAB_SOURCE[v]})" for v in need_vocab if not vocab.get(v)] + \
            [f"split {s} has no temporal segments (ingest it with --segments)" for s in SEGMENT_SPLITS.get(task, ())
             if plan.has(s) and not manifest["splits"].get(s, {}).get("has_segments")]
        if reasons:
            out[task] = "; ".join(reasons)
    return out
