"""Which stored rows a logical split reads: ``train`` / ``val`` / ``test`` / low-shot subsets on any dataset.

Runbook::

    plan = SplitPlan.from_config(dataset, cfg)
    plan.source("val")        # SplitSource(stored="train", rows=array([3, 17, ...]), note="carved: 10 % of train ...")
    plan.source("test")       # SplitSource(stored="test", rows=None, note="stored split test")
    plan.source("train_10pct")  # 10 % of the (val-less) train labels per class, at least one each
    plan.describe()           # {"val": "carved: ...", ...}: what a run records in its params

Evaluation and the online probe ask for *logical* splits; each maps to a
stored split of the dataset: ``eval.train_split`` (default ``train``),
``data.val_split`` (``val``) and ``eval.test_split`` (``test``). A dataset
without the validation split — the usual pretrain / train / test layout of
user data — gets one carved from train: a seeded, label-stratified fraction
(``eval.val_fraction``) of the train rows, at least one per class that has
two or more rows; ``train`` is then the rest, so no row is both. Low-shot
subsets ``train_<p>pct`` are drawn the same way from (that) train, at least
one row per class; a stored split of that name wins (SynthAction writes
``train_1pct`` / ``train_10pct``) unless val is carved (it could overlap the
carve). Only labelled train rows are carved; unlabelled ones stay in train. Every carve is a pure function of the
stored labels, the fraction and ``eval.split_seed``: the same on every run,
node and process. Any other name is a stored split, read whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow.parquet as pq

from . import store

LOWSHOT = re.compile(r"^train_(\d+(?:\.\d+)?)pct$")
LABEL_COLUMN = "action"


@dataclass(frozen=True)
class SplitSource:
    """A logical split: the stored split it reads, the row positions in stored order (None: all), and how."""

    stored: str
    rows: np.ndarray | None
    note: str


class SplitPlan:
    def __init__(self, dataset: str, *, train: str = "train", val: str = "val", test: str = "test",
                 val_fraction: float = 0.1, seed: int = 0):
        if not 0 < val_fraction < 1:
            raise ValueError(f"eval.val_fraction must be in (0, 1), got {val_fraction}")
        self.dataset, self.seed, self.val_fraction = dataset, seed, val_fraction
        self.names = {"train": train, "val": val, "test": test}

    @classmethod
    def from_config(cls, dataset: str, cfg) -> SplitPlan:
        e = cfg.eval
        return cls(dataset, train=e.train_split, val=cfg.data.val_split, test=e.test_split,
                   val_fraction=e.val_fraction, seed=e.split_seed)

    @cached_property
    def stored(self) -> set[str]:
        return set(store.load_manifest(self.dataset).get("splits", {}))

    def has(self, split: str) -> bool:
        """Whether ``split`` can be served: stored, or carved from a stored train split."""
        if split in self.names:  # a probe split: its configured stored name, or (val) a carve of train
            return self.names[split] in self.stored or (split == "val" and self.names["train"] in self.stored)
        return split in self.stored or (bool(LOWSHOT.match(split)) and self.names["train"] in self.stored)

    def source(self, split: str) -> SplitSource:
        if split == "train" and self._carves_val:
            return self._rest_of_train
        if split == "val" and self._carves_val:
            return self._carved_val
        if split in self.names:
            stored = self.names[split]
            if stored not in self.stored:
                raise ValueError(f"{store.manifest_path(self.dataset)}: no split {stored!r} "
                                 f"(splits: {', '.join(sorted(self.stored)) or 'none'})")
            return SplitSource(stored, None, f"stored split {stored}")
        match = LOWSHOT.match(split)
        if split in self.stored and not (match and self._carves_val):
            # a stored low-shot split was drawn from the whole train split: with a carved val it could overlap
            # the rows that choose hyper-parameters, so it is then drawn again from the rest of train
            return SplitSource(split, None, f"stored split {split}")
        if match and self.names["train"] in self.stored:
            return self._lowshot(float(match.group(1)) / 100, split)
        raise ValueError(f"{store.manifest_path(self.dataset)}: no split {self.names.get(split, split)!r} "
                         f"(splits: {', '.join(sorted(self.stored)) or 'none'})")

    def describe(self, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, str]:
        return {s: self.source(s).note for s in splits if self.has(s)}

    # -- carving ----------------------------------------------------------------------------------------------

    @property
    def _carves_val(self) -> bool:
        return self.names["val"] not in self.stored and self.names["train"] in self.stored

    @cached_property
    def _train_labels(self) -> np.ndarray:
        """The train split's labels in stored order (-1: none)."""
        return stored_labels(self.dataset, self.names["train"])

    @cached_property
    def _labelled_train(self) -> np.ndarray:
        """Train row positions that carry a label: only these are carved (an unlabelled row stays in train,
        where label-free readers such as retrieval can still use it, and never reaches a probe's targets)."""
        labelled = np.flatnonzero(self._train_labels >= 0)
        return labelled if len(labelled) else np.arange(len(self._train_labels))  # no labels at all: any row

    @cached_property
    def _carved_val(self) -> SplitSource:
        rows = stratified_sample(self._train_labels, self._labelled_train, self.val_fraction, self.seed,
                                 keep_one=True)
        if not len(rows):
            raise ValueError(f"{store.manifest_path(self.dataset)}: no split {self.names['val']!r}, and none can be "
                             f"carved from {self.names['train']!r}: no class has two labelled rows")
        return SplitSource(self.names["train"], rows, self._note(rows, self.val_fraction, "val"))

    @cached_property
    def _rest_of_train(self) -> SplitSource:
        rows = np.setdiff1d(np.arange(len(self._train_labels)), self._carved_val.rows)
        return SplitSource(self.names["train"], rows,
                           f"{self.names['train']} less the carved val: {len(rows)} rows")

    def _lowshot(self, fraction: float, split: str) -> SplitSource:
        base = self.source("train")
        pool = base.rows if base.rows is not None else np.arange(len(self._train_labels))
        pool = np.intersect1d(pool, self._labelled_train)
        rows = stratified_sample(self._train_labels, pool, fraction, self.seed + 1, keep_one=False)
        per_class = np.unique(self._train_labels[pool], return_counts=True)[1]
        raised = int((np.round(fraction * per_class) < 1).sum())
        note = self._note(rows, fraction, split)
        if raised:
            note += f"; raised to one clip per class for {raised} of {len(per_class)} classes"
        return SplitSource(base.stored, rows, note)

    def _note(self, rows: np.ndarray, fraction: float, split: str) -> str:
        labelled = bool((self._train_labels >= 0).any())
        how = "stratified by action" if labelled else "uniformly (no action labels)"
        return (f"carved {split}: {fraction:.3g} of {self.names['train']} per class, {how}, seed {self.seed}: "
                f"{len(rows)} rows")


def stored_labels(dataset: str, split: str) -> np.ndarray:
    """The ``action`` column of a stored split in stored order; -1 where a row has none (or no column)."""
    out = []
    for path in store.split_paths(dataset, split):
        schema = pq.read_schema(path)
        if LABEL_COLUMN in schema.names:
            column = pq.read_table(path, columns=[LABEL_COLUMN]).column(LABEL_COLUMN).to_pylist()
            out.append(np.array([-1 if v is None else int(v) for v in column], dtype=np.int64))
        else:
            out.append(np.full(pq.read_metadata(path).num_rows, -1, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def stratified_sample(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int, *,
                      keep_one: bool) -> np.ndarray:
    """``fraction`` of the rows in ``pool`` per label (rounded, at least one), sorted.

    ``keep_one``: leave at least one row of every label outside the sample (a carved val must not take a
    class's only train row); a label with a single row then gives none. Unlabelled rows (-1) form one group.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[pool]):
        members = pool[labels[pool] == label]
        take = max(1, round(fraction * len(members)))
        if keep_one:
            take = min(take, len(members) - 1)
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
