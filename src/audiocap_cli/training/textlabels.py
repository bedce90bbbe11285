"""Labels read from caption text, for the sound classes a corpus' own labels barely cover.

AudioCaps clips are AudioSet segments with AudioSet's human labels, but its selection left
whole classes out: no train clip is labelled Cattle, Moo, Cowbell or Hoot, yet captions say
"cows are mooing" or "an owl hoots" (their clips carry other labels, such as Livestock). A
tagger that hears a cow then finds no label set with Cattle in it, and the nearest sets are
other livestock: the caption names a pig.

So a caption that names a rare class is labelled with it too: the class's display name, split
at its commas ("Cattle, bovinae" -> "cattle", "bovinae"), matched as whole words with the usual
English inflections ("moo" -> "moos", "mooing", "mooed"). Closing the labels under the ontology
then adds the class's ancestors (Moo -> Cattle -> Livestock -> Animal). Only classes labelled on
fewer than ``RARE`` clips are read from text: where human labels exist they are better than a
word match. Caption verbs are shared between sources ("an engine roars", "a horn honks", "a
mouse clicking", "birds singing"), so a word counts only when the clip's own labels lie in the
same top-level branch of the ontology as the class (Roar is an Animal sound; an engine clip has
no Animal label). Scene and channel classes ("Inside, small room") are never read from text.

Training data only, like the labels themselves: captions of the corpus, never a file's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# A class labelled on fewer corpus clips than this also takes labels from caption text.
RARE = 20
# Top-level AudioSet branches whose classes are places, channels or generic qualities, not
# sources a caption names: "Channel, environment and background", "Source-ambiguous sounds".
SKIP_BRANCHES = ("/t/dd00123", "/t/dd00098")
_WORD = re.compile(r"[a-z]+")


def keywords(name: str) -> list[tuple[str, ...]]:
    """Word sequences that name a class: the comma-separated parts of its display name, without
    parenthesised qualifiers, lower case ("Whimper (dog)" -> [("whimper",)])."""
    out = []
    for part in re.sub(r"\([^)]*\)", "", name).split(","):
        words = tuple(_WORD.findall(part.lower()))
        if words and len(words) <= 2:
            out.append(words)
    return out


def forms(word: str) -> set[str]:
    """``word`` and its regular inflections (plural, -ing, -ed)."""
    out = {word, word + "s", word + "es", word + "ing", word + "ed"}
    if word.endswith("e"):
        out |= {word[:-1] + "ing", word + "d"}
    if word.endswith("y"):
        out |= {word[:-1] + "ies", word[:-1] + "ied"}
    if re.search(r"[^aeiou][aeiou][bdgklmnprt]$", word):  # "hum" -> "humming", "bat" -> "batted"
        out |= {word + word[-1] + "ing", word + word[-1] + "ed"}
    return out


def text_classes(
    names: Sequence[str], counts: np.ndarray, skip: np.ndarray | None = None
) -> dict[int, list[tuple[frozenset[str], ...]]]:
    """Class index -> its keyword patterns, for the classes read from text: labelled on fewer
    than ``RARE`` clips (``counts [C]``) and not marked in ``skip [C]``."""
    out = {}
    for i, name in enumerate(names):
        if counts[i] >= RARE or (skip is not None and skip[i]):
            continue
        pats = [tuple(frozenset(forms(w)) for w in kw) for kw in keywords(name)]
        if pats:
            out[i] = pats
    return out


def mentions(caption: str, patterns: list[tuple[frozenset[str], ...]]) -> bool:
    """Whether the caption's words contain one of the patterns (consecutive words)."""
    words = _WORD.findall(caption.lower())
    for pat in patterns:
        n = len(pat)
        for j in range(len(words) - n + 1):
            if all(words[j + t] in pat[t] for t in range(n)):
                return True
    return False


def add_text_labels(
    labels: np.ndarray,
    captions: Sequence[str],
    names: Sequence[str],
    branches: np.ndarray,
    skip: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
    """``labels [N, C]`` (one row per caption) with the rare classes its caption names added,
    where the row's labels share a top-level branch with the class (``branches [C, R]``, see
    ``audioset.top_branches``); also {class index: captions that gained it}."""
    lab = np.asarray(labels) > 0
    counts = lab.sum(axis=0)
    row_branches = (lab.astype(np.int32) @ branches.astype(np.int32)) > 0  # [N, R]
    out = np.array(labels, dtype=np.float32, copy=True)
    gained: dict[int, int] = {}
    for i, pats in text_classes(names, counts, skip).items():
        near = row_branches[:, branches[i]].any(axis=1)
        hit = [
            r for r, cap in enumerate(captions) if near[r] and not lab[r, i] and mentions(cap, pats)
        ]
        if hit:
            out[hit, i] = 1.0
            gained[i] = len(hit)
    return out, gained
