"""agreement: caption words, the consensus TF-IDF cosine, CIDEr-D against pycocoevalcap, METEOR's
unigram F-mean, and the minimum-Bayes-risk choice."""

from __future__ import annotations

import collections
import math
import re

import numpy as np
import pytest

from audiocap_cli.text import agreement as ag


def test_words_and_the_repeat_penalty_s_letter_runs() -> None:
    """One tokenizer: words keep digits and apostrophes; the repeat penalty's letter runs are
    those words cut there, exactly the runs of a-z the penalty always read."""
    text = "A man's 2nd DOG barks, café-noise: rock'n'roll"
    assert ag.words(text) == ["a", "man's", "2nd", "dog", "barks", "caf", "noise", "rock'n'roll"]
    assert ag.letter_runs(text) == re.findall(r"[a-z]+", text.lower())
    assert ag.letter_runs("") == [] and ag.words("...") == []


def test_select_mbr_returns_an_index_or_the_pools_caption() -> None:
    hyps = [["a man speaks", "a dog barks loudly"], ["x"], ["a man speaks", "a dog barks"]]
    ev = (["a dog barks", "a dog barks", "dogs bark loudly"], [1.0, 1.0, 1.0])
    assert ag.select_mbr(hyps, [ev, ev, ([], [])], 3.0) == [1, 0, 0]
    # hypotheses that say none of the pool: its most typical caption instead, unless inf
    far = [["a man speaks", "rain falls"]]
    assert ag.select_mbr(far, [ev], 3.0, None, 0.0) == ["a dog barks"]
    assert ag.select_mbr(far, [ev], 3.0, None, math.inf) == [0]


def _ref_consensus(group: list[str]) -> list[float]:
    """Brute-force definition of consensus_scores for one group (dicts and loops)."""
    n = len(group)
    bags = []
    for t in group:
        w = re.findall(r"[a-z0-9']+", t.lower())
        bags.append(
            [
                collections.Counter(tuple(w[i : i + k]) for i in range(len(w) - k + 1))
                for k in range(1, 5)
            ]
        )

    def vec(i: int, k: int) -> dict:
        return {
            g: c * (math.log((n + 1) / (sum(g in b[k] for b in bags) + 1)) + 1)
            for g, c in bags[i][k].items()
        }

    out = []
    for i in range(n):
        s = 0.0
        for j in range(n):
            if i == j:
                continue
            for k in range(4):
                vi, vj = vec(i, k), vec(j, k)
                ni, nj = (
                    math.sqrt(sum(x * x for x in vi.values())),
                    math.sqrt(sum(x * x for x in vj.values())),
                )
                if ni and nj:
                    s += sum(x * vj.get(g, 0.0) for g, x in vi.items()) / ni / nj
        out.append(s / (n - 1) / 4 if n > 1 else 0.0)
    return out


def test_consensus_scores_match_bruteforce() -> None:
    groups = [
        [
            "a dog barks",
            "a dog is barking loudly",
            "a car passes by",
            "A dog barks and a man speaks",
            "a dog barks",
        ],
        ["rain falls", "heavy rain falls on a roof", "wind blows"],
        ["only one"],
        [],
        ["", "a b c d e f", "a b c d"],
    ]
    got = ag.consensus_scores(groups)
    for g, s in zip(groups, got):
        np.testing.assert_allclose(s, _ref_consensus(g), atol=1e-12)


def test_consensus_rerank_picks_the_agreeing_caption() -> None:
    groups = [
        ["a car passes by", "a dog barks loudly", "a dog barks", "dogs bark and a dog growls"],
        ["x"],
    ]
    assert ag.consensus_rerank(groups) == [["a dog barks"], ["x"]]
    top2 = ag.consensus_rerank(groups, top=2)
    assert top2[0][0] == "a dog barks" and len(top2[0]) == 2 and top2[1] == ["x"]
    # weights: the others' votes count with their weight
    w = ag.consensus_scores([["a b", "a b", "c d"]], weights=[[1.0, 0.0, 1.0]])[0]
    assert w[2] == 0.0 and w[0] == 0.0  # a b's only other vote (the weight-0 copy) carries nothing
    assert w[1] > 0


def test_consensus_with_corpus_idf() -> None:
    corpus = ["a dog barks", "a cat meows", "a dog growls", "a man speaks"]
    idf = ag.ngram_idf(corpus)
    assert idf["1\x00a"] == 0.0 and idf["1\x00dog"] == pytest.approx(math.log(2))
    # "a" is in every corpus caption: with corpus idf it carries no consensus
    s = ag.consensus_scores([["a cat", "a car", "a bus"]], idf=idf)[0]
    np.testing.assert_allclose(s, 0.0)
    s_pool = ag.consensus_scores([["a cat", "a car", "a bus"]])[0]
    assert (s_pool > 0).all()
    # unseen n-grams weigh as the rarest seen one; a shared rare word wins
    s = ag.consensus_scores([["a car", "a dog barks", "the dog barks"]], idf=idf)[0]
    assert s[0] == 0.0 and s[1] > 0 and s[2] > 0


# Reference sets of a small corpus, lower case and unpunctuated, so that pycocoevalcap's
# whitespace split and agreement.words agree.
_CIDER_REFS = [
    ["a dog barks", "a dog is barking loudly", "dogs bark and a man speaks"],
    ["rain falls on a roof", "heavy rain falls", "rain and thunder"],
    ["a man speaks", "a man is speaking and a dog barks", "a man talks"],
    ["a car engine revs", "an engine revving", "a car passes by"],
]
_CIDER_HYPS = [
    "a dog barks and a dog barks",
    "rain falls",
    "a man speaks while a dog is barking loudly",
    "a bus",
]


def test_ciderd_agreement_is_pycocoevalcaps_ciderd() -> None:
    """Against one clip's references with equal weights and the idf of the reference sets,
    ciderd_agreement is pycocoevalcap 1.2's CIDEr-D of that clip (clipping, length penalty and
    all), for every hypothesis of every clip."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    df: dict[str, int] = {}
    for refs in _CIDER_REFS:
        for g in {g for r in refs for g in ag._ngrams(r)}:
            df[g] = df.get(g, 0) + 1
    idf = {g: math.log(len(_CIDER_REFS)) - math.log(d) for g, d in df.items()}
    for hyp in _CIDER_HYPS:
        scorer = CiderScorer(n=4, sigma=6.0)
        for refs in _CIDER_REFS:
            scorer += (hyp, refs)
        _, want = scorer.compute_score()
        got = [ag.ciderd_agreement([hyp], refs, [1.0] * len(refs), idf)[0] for refs in _CIDER_REFS]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_reference_idf_gives_pycocoevalcaps_ciderd_per_clip_and_corpus() -> None:
    """With the scored clips' reference sets as the corpus (reference_idf; an n-gram none of
    them has weighs log N), ciderd_agreement is pycocoevalcap's Cider per clip, and their mean
    its corpus score; a reference scores high, an unrelated caption zero."""
    from _shared import EXAMPLE_REFS
    from pycocoevalcap.cider.cider import Cider

    hyps = {"a": "a dog barks while a man talks", "b": "water is running into a sink"}
    gts = {k: list(v) for k, v in EXAMPLE_REFS.items()}
    want_corpus, want = Cider().compute_score(gts, {k: [hyps[k]] for k in gts})
    idf, unseen = ag.reference_idf(list(gts.values())), math.log(len(gts))

    def score(h: list[str], refs: list[str]) -> np.ndarray:
        return ag.ciderd_agreement(h, refs, [1.0] * len(refs), idf, unseen=unseen)

    got = [float(score([hyps[k]], gts[k])[0]) for k in gts]
    assert got == pytest.approx(list(want), rel=1e-9)
    assert np.mean(got) == pytest.approx(want_corpus)
    assert score(["a dog barks in the distance", "birds sing"], gts["a"]).tolist()[1] == 0.0


def test_ciderd_consensus_is_each_captions_agreement_with_the_rest() -> None:
    """Each pooled caption's score is its expected CIDEr-D (ciderd_agreement) plus the recall
    weight times its mean unigram F-mean, against the other captions of its pool, weighted;
    a repeated text still counts its other copies."""
    idf = ag.ngram_idf([c for refs in _CIDER_REFS for c in refs])
    pool = _CIDER_REFS[0] + _CIDER_HYPS + ["a dog barks"]  # "a dog barks" twice
    w = np.linspace(0.5, 2.0, len(pool))
    for rw in (0.0, 3.0):
        got = ag.ciderd_consensus([pool, pool[:2], []], [w, w[:2], []], idf, rw)
        for i, cap in enumerate(pool):
            others = [c for j, c in enumerate(pool) if j != i]
            wo = np.delete(w, i)
            want = ag.ciderd_agreement([cap], others, wo, idf)[0]
            want += rw * np.average(
                ag.unigram_fmean([ag.words(cap)], [ag.words(c) for c in others])[0], weights=wo
            )
            assert got[0][i] == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert got[1][0] == pytest.approx(
            ag.ciderd_agreement(pool[:1], pool[1:2], [1.0], idf)[0]
            + rw * ag.unigram_fmean([ag.words(pool[0])], [ag.words(pool[1])])[0, 0]
        )
        assert len(got[2]) == 0


def test_ciderd_agreement_weights_and_edge_cases() -> None:
    idf = ag.ngram_idf([c for refs in _CIDER_REFS for c in refs])
    refs = ["a dog barks", "rain falls on a roof"]
    one = ag.ciderd_agreement(["a dog barks", "rain falls"], refs[:1], [1.0], idf)
    # weights average the per-reference scores; a repeated reference adds its weight
    both = ag.ciderd_agreement(["a dog barks", "rain falls"], refs, [3.0, 1.0], idf)
    other = ag.ciderd_agreement(["a dog barks", "rain falls"], refs[1:], [1.0], idf)
    np.testing.assert_allclose(both, 0.75 * one + 0.25 * other)
    np.testing.assert_allclose(
        ag.ciderd_agreement(["a dog barks"], [refs[0], refs[0]], [1.0, 2.0], idf), one[:1]
    )
    assert one[0] > one[1] and other[1] > other[0]
    # clipping: saying "dog barks" twice gains nothing over saying it once; the length penalty
    # then makes the repeat lose
    rep = ag.ciderd_agreement(["a dog barks", "a dog barks and a dog barks"], refs[:1], [1.0], idf)
    assert rep[0] > rep[1]
    assert ag.ciderd_agreement([], refs, [1.0, 1.0], idf).shape == (0,)
    np.testing.assert_array_equal(ag.ciderd_agreement(["a dog"], refs, [0.0, 0.0], idf), [0.0])
    # without an idf every n-gram weighs 1: "a dog" against itself matches its 1- and 2-grams
    # fully and has no 3- or 4-grams, so CIDEr-D = 10 x (1 + 1 + 0 + 0) / 4
    np.testing.assert_allclose(ag.ciderd_agreement(["a dog"], ["a dog"], [1.0], None), [5.0])
