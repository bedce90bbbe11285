"""The ``confidence`` of a caption record: one number in [0, 1] that a curator can filter on.

It is the agreement of the printed caption with the captions retrieval found for its window
(the weighted evidence pool of ``Retrieval.retrieval_of``: for the default model the 100
captions of the nearest label sets): the mean TF-IDF cosine of the caption with the pool's
captions, weighted as the pool is, over 1- to 4-grams weighted by the idf of every caption in
the model's index (:func:`agreement.consensus_scores`, the measure consensus re-ranking uses).
One exact copy of the caption is left out of the pool, or a caption copied from the pool would
be credited with matching itself. Where the retrieved clips agree on what they hear and the
caption says it, the figure is high; a caption the pool does not support, or a pool that does
not agree with itself (a sound the index has no good match for), gives a low one. 0 means the
caption shares no word with anything retrieved; 1, every retrieved caption says exactly it.

``bench/quality/confidence_report.py`` validates it against per-clip METEOR and CIDEr-D, beside
the candidates it was chosen from (see docs/experiments.md). The captioner and that report both
call :func:`confidence`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..text.agreement import Evidence, consensus_scores, words


def confidence(
    captions: Sequence[str], pools: Sequence[Evidence], idf: dict[str, float] | None
) -> list[float]:
    """Per window, the mean TF-IDF cosine (n-gram ``idf``: the index's ``ngram_idf``; None:
    each group's own) of its caption with its pool (captions, weights), one exact copy of the
    caption left out; in [0, 1], rounded to 3 decimals. 0 for an empty caption or pool."""
    groups: list[list[str]] = []
    weights: list[list[float]] = []
    for caption, (pool, w) in zip(captions, pools):
        caps, ws = list(pool), [float(x) for x in w]
        if caption in caps:  # leave one copy of itself out
            i = caps.index(caption)
            del caps[i], ws[i]
        # the caption weighs nothing in the others' means: only its own row is read
        groups.append([caption, *caps] if words(caption) and sum(ws) > 0 else [])
        weights.append([0.0, *ws] if groups[-1] else [])
    scores = consensus_scores(groups, weights, idf)
    return [round(min(max(float(s[0]), 0.0), 1.0), 3) if len(s) else 0.0 for s in scores]
