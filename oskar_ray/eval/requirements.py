"""What each downstream task needs of a dataset, checked from its ``manifest.json`` before anything runs.

Runbook::

    problems = unservable(["action", "vqa"], "data/mine")   # {"vqa": "no question-answer annotations ..."}

A sweep refuses its eval tasks up front with these reasons (``oskar_ray.tune.runner``): finding out that a
dataset has no QA annotations after six trials have pretrained wastes the sweep. The tasks themselves still
check what they read (``EvalContext.require_split``); this is the cheap summary of the same needs.
"""

from __future__ import annotations

from ..data import store

#: splits every probe-based task reads (hyper-parameters chosen on val, scores on test)
PROBE_SPLITS = ("train", "val", "test")
#: task -> (splits it reads, manifest vocabularies it needs). Captions leave no trace in the manifest: a
#: dataset without them fails inside the retrieval task, which records the error on the run.
NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "action": (PROBE_SPLITS, ("actions",)),
    "lowshot": (("val", "test"), ("actions",)),
    "localization": (("untrimmed",), ("actions",)),
    "retrieval": (PROBE_SPLITS, ()),
    "vqa": (PROBE_SPLITS, ("answers", "question_types")),
    "health": (("test",), ()),
    "robustness": (PROBE_SPLITS, ("actions",)),
}
LOWSHOT_SPLITS = ("train_1pct", "train_10pct")
#: what each vocabulary comes from, for the message
VOCAB_SOURCE = {"actions": "action labels", "answers": "question-answer annotations (e.g. --qa at ingest)",
                "question_types": "question-answer annotations (e.g. --qa at ingest)"}


def unservable(tasks: list[str], dataset: str) -> dict[str, str]:
    """{task: why this dataset cannot serve it} for the tasks it cannot serve (empty: all fine)."""
    manifest = store.load_manifest(dataset)
    splits = set(manifest.get("splits", {}))
    vocab = manifest.get("vocab", {})
    out: dict[str, str] = {}
    for task in tasks:
        need_splits, need_vocab = NEEDS[task]
        missing = [s for s in need_splits if s not in splits]
        if task == "lowshot" and not splits & set(LOWSHOT_SPLITS):
            missing.append(" or ".join(LOWSHOT_SPLITS))
        empty = [v for v in need_vocab if not vocab.get(v)]
        reasons = ([f"no split {', '.join(missing)} (splits: {', '.join(sorted(splits)) or 'none'})"] if missing
                   else []) + [f"manifest vocab.{v} is empty (no {VOCAB_SOURCE[v]})" for v in empty]
        if reasons:
            out[task] = "; ".join(reasons)
    return out
