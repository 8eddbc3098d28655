"""SynthAction language: captions and QA pairs describing a clip.

Captions come from several templates with synonyms and mention the action,
the shirt colour, the number of repetitions and (for sided actions) the side
or direction, so text carries the same facts as video and skeleton. QA pairs
ask one question per type:

==========  ===============================  ==================
type        example                          answer vocabulary
==========  ===============================  ==================
action      what is the person doing?        action names
colour      what colour is the shirt?        colour names
count       how many times ...?              one, two, three …
side        which side ...?                  left, right
==========  ===============================  ==================

Use::

    captions = make_captions(fact, rng, n=2)
    qa = make_qa(fact, rng)     # [(question, answer, type), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .motion import ACTION_SIDE, ACTIONS

QUESTION_TYPES: tuple[str, ...] = ("action", "colour", "count", "side")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")
_TIMES = {1: ("once", "one time"), 2: ("twice", "two times"), 3: ("three times", "thrice"),
          4: ("four times",), 5: ("five times",)}
# phrases per action; {side} is filled with left/right
_PHRASES: dict[str, tuple[str, ...]] = {
    "wave_left": ("waves the {side} hand", "waves with the {side} arm", "is waving the {side} hand"),
    "wave_right": ("waves the {side} hand", "waves with the {side} arm", "is waving the {side} hand"),
    "raise_arms": ("raises both arms", "lifts both arms up", "puts both hands in the air"),
    "clap": ("claps", "claps the hands", "is clapping"),
    "jump": ("jumps", "hops up", "jumps in place"),
    "squat": ("squats", "does a squat", "bends the knees and crouches"),
    "kick_left": ("kicks with the {side} leg", "kicks the {side} foot forward", "does a {side} kick"),
    "kick_right": ("kicks with the {side} leg", "kicks the {side} foot forward", "does a {side} kick"),
    "walk_left": ("walks to the {side}", "steps towards the {side}", "moves to the {side}"),
    "walk_right": ("walks to the {side}", "steps towards the {side}", "moves to the {side}"),
    "turn": ("turns around", "spins around", "does a full turn"),
    "bow": ("bows", "bends forward", "takes a bow"),
    "punch": ("punches", "throws a punch", "punches forward"),
}
_SUBJECTS = ("a person in a {colour} shirt", "someone wearing {colour}", "the figure in {colour}",
             "a {colour}-shirted person", "a man dressed in {colour}")
_TEMPLATES = ("{subject} {phrase} {times}", "{subject} {phrase}", "{times}, {subject} {phrase}",
              "here {subject} {phrase} {times}")


@dataclass
class Fact:
    """What a clip shows: the ground truth behind its captions and answers."""

    action: str
    colour: str
    reps: int

    @property
    def side(self) -> str | None:
        return ACTION_SIDE.get(self.action)


def action_answer(action: str) -> str:
    return action.replace("_", " ")


def make_captions(fact: Fact, rng: np.random.Generator, n: int = 2) -> list[str]:
    captions = []
    for _ in range(n):
        phrase = _pick(rng, _PHRASES[fact.action]).format(side=fact.side or "")
        subject = _pick(rng, _SUBJECTS).format(colour=fact.colour)
        times = _pick(rng, _TIMES.get(fact.reps, (f"{fact.reps} times",)))
        captions.append(_pick(rng, _TEMPLATES).format(subject=subject, phrase=phrase, times=times))
    return captions


def make_qa(fact: Fact, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """One (question, answer, question type) per applicable type, in QUESTION_TYPES order."""
    verb = _pick(rng, _PHRASES[fact.action]).format(side=fact.side or "")
    qa = [
        (_pick(rng, ("what is the person doing?", "which action is performed?", "what action do you see?")),
         action_answer(fact.action), "action"),
        (_pick(rng, ("what colour is the shirt?", "which colour does the person wear?",
                     "what colour are the clothes?")), fact.colour, "colour"),
        (_pick(rng, (f"how many times does the person do it? the person {verb}",
                     "how many repetitions are there?", "how often is the action repeated?")),
         COUNT_WORDS[fact.reps] if fact.reps < len(COUNT_WORDS) else str(fact.reps), "count"),
    ]
    if fact.side is not None:
        qa.append((_pick(rng, ("which side is used?", "left or right?", "which side does it happen on?")),
                   fact.side, "side"))
    return qa


def answer_vocabulary(colours: list[str], max_reps: int) -> list[str]:
    """Every answer synth can produce, in a fixed order (ids are stable across runs)."""
    counts = [COUNT_WORDS[r] for r in range(1, max_reps + 1)]
    return [action_answer(a) for a in ACTIONS] + list(colours) + counts + ["left", "right"]


def stated_facts(caption: str, fact: Fact) -> tuple[str, str, int | None]:
    """(action, colour, reps or None): what ``caption`` of a clip showing ``fact`` says. Every template names
    the action (and its side) and the colour; one in four leaves the repetitions out."""
    words = f" {caption.replace(',', ' ')} "
    said = any(f" {phrase} " in words for phrase in _TIMES.get(fact.reps, (f"{fact.reps} times",)))
    return fact.action, fact.colour, fact.reps if said else None


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]
