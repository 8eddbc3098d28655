"""What each clip shows and what its caption says: the ground truth behind fact-level retrieval and its ceiling.

Runbook::

    facts = load_facts("data/synth", "test")      # None when the rows carry no attributes (user data)
    facts.consistent                              # (n_captions, n_clips) bool: clip j has caption i's facts
    fact_metrics(sim, facts)["t2v/fact_R1"], ...["t2v/R1_ceiling"]

Captions of the built-in benchmark name a clip's action and shirt colour, and in three of four templates
its repetitions. Two clips with the same stated facts are indistinguishable from the caption, so even a
perfect matcher that breaks ties at random gets instance-level Recall@1 = mean over captions of
1 / (clips consistent with the caption) — the *ceiling* (about 71 % on the 200 test clips). Fact-level
Recall@1 counts a hit when the top-ranked item is consistent with the query's facts, whichever clip it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.language import Fact, stated_facts
from ..data.splits import SplitSource
from .features import read_rows

#: a clip's facts: (action, colour, reps); a caption's: the same with None for what it does not say
FactTuple = tuple


@dataclass
class ClipFacts:
    clips: list[FactTuple]
    captions: list[FactTuple]

    @property
    def consistent(self) -> torch.Tensor:
        """``(n_captions, n_clips)``: clip j shows every fact that caption i states."""
        return torch.tensor([[all(c is None or c == v for c, v in zip(cap, clip, strict=True))
                              for clip in self.clips] for cap in self.captions])


def load_facts(dataset: str | Path, split: str | SplitSource, actions: list[str]) -> ClipFacts | None:
    """Facts of every row of ``split`` in stored order (the features' order), from ``attributes`` JSON
    (colour, reps) and ``action``; None if any row lacks them."""
    clips, captions = [], []
    for row in read_rows(dataset, split, ["action", "attributes", "captions"]):
        attributes = json.loads(row.get("attributes") or "{}")
        if row.get("action") is None or "colour" not in attributes or "reps" not in attributes:
            return None
        fact = Fact(actions[row["action"]], attributes["colour"], int(attributes["reps"]))
        clips.append((fact.action, fact.colour, fact.reps))
        captions.append(stated_facts((row.get("captions") or [""])[0], fact))
    return ClipFacts(clips, captions) if clips else None


def fact_metrics(sim: torch.Tensor, facts: ClipFacts) -> dict[str, float]:
    """``sim[i, j]``: caption i vs clip j. Fact-level R@1 both ways and the instance R@1 ceilings (%) of a
    perfect fact matcher (v2t: to first order, treating captions as independent guesses)."""
    consistent = facts.consistent
    if consistent.shape != sim.shape:
        raise ValueError(f"retrieval facts: {tuple(consistent.shape)} caption x clip facts for a "
                         f"{tuple(sim.shape)} similarity matrix")
    rows = torch.arange(len(sim))
    return {
        "t2v/fact_R1": float(consistent[rows, sim.argmax(1)].float().mean() * 100),
        "v2t/fact_R1": float(consistent[sim.argmax(0), rows].float().mean() * 100),
        "t2v/R1_ceiling": float((1 / consistent.sum(1).float()).mean() * 100),
        # a clip's best guess is its most specific consistent caption: caption i is clip j's own with
        # probability 1 / (clips consistent with i), so stating the count makes a caption likelier to be its
        # clip's (random tie-breaking among all consistent captions would be a baseline, not a ceiling)
        "v2t/R1_ceiling": float((consistent / consistent.sum(1, keepdim=True)).max(0).values.mean() * 100),
    }


def oracle_features(facts: list[FactTuple], vocabularies: list[list]) -> torch.Tensor:
    """One-hot of each fact (all zeros where unstated): the sanity baseline's perfect features."""
    parts = []
    for k, vocab in enumerate(vocabularies):
        index = {v: i for i, v in enumerate(vocab)}
        part = torch.zeros(len(facts), len(vocab))
        for row, fact in enumerate(facts):
            if fact[k] is not None:
                part[row, index[fact[k]]] = 1.0
        parts.append(part)
    return torch.cat(parts, dim=1)
