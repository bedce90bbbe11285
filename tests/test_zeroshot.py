"""zeroshot: caption/audio vectors in a shared space, dedupe and consensus re-ranking."""

from __future__ import annotations

import collections
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audiocap_cli import zeroshot as zs
from audiocap_cli.config import check_config, load_config, save_config
from audiocap_cli.errors import ConfigMismatchError

C = zs.NUM_CLASSES
E = 384


@pytest.fixture()
def fake_classes(monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Class-name vectors without the text model: random unit rows [C, E]."""
    rng = np.random.default_rng(0)
    k = rng.normal(size=(C, E)).astype(np.float32)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    monkeypatch.setattr(zs, "class_name_vectors", lambda cfg: k)
    return k


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
    got = zs.consensus_scores(groups)
    for g, s in zip(groups, got):
        np.testing.assert_allclose(s, _ref_consensus(g), atol=1e-12)


def test_consensus_rerank_picks_the_agreeing_caption() -> None:
    groups = [
        ["a car passes by", "a dog barks loudly", "a dog barks", "dogs bark and a dog growls"],
        ["x"],
    ]
    assert zs.consensus_rerank(groups) == [["a dog barks"], ["x"]]
    top2 = zs.consensus_rerank(groups, top=2)
    assert top2[0][0] == "a dog barks" and len(top2[0]) == 2 and top2[1] == ["x"]
    # weights: the others' votes count with their weight
    w = zs.consensus_scores([["a b", "a b", "c d"]], weights=[[1.0, 0.0, 1.0]])[0]
    assert w[2] == 0.0 and w[0] == 0.0  # a b's only other vote (the weight-0 copy) carries nothing
    assert w[1] > 0


def test_consensus_with_corpus_idf() -> None:
    corpus = ["a dog barks", "a cat meows", "a dog growls", "a man speaks"]
    idf = zs.ngram_idf(corpus)
    assert idf["1\x00a"] == 0.0 and idf["1\x00dog"] == pytest.approx(math.log(2))
    # "a" is in every corpus caption: with corpus idf it carries no consensus
    s = zs.consensus_scores([["a cat", "a car", "a bus"]], idf=idf)[0]
    np.testing.assert_allclose(s, 0.0)
    s_pool = zs.consensus_scores([["a cat", "a car", "a bus"]])[0]
    assert (s_pool > 0).all()
    # unseen n-grams weigh as the rarest seen one; a shared rare word wins
    s = zs.consensus_scores([["a car", "a dog barks", "the dog barks"]], idf=idf)[0]
    assert s[0] == 0.0 and s[1] > 0 and s[2] > 0


def test_dedupe_captions() -> None:
    texts, counts, inv = zs.dedupe_captions(
        ["A dog barks.", "a dog  barks", " Rain falls ", "a dog barks!"]
    )
    assert texts == ["A dog barks.", "Rain falls"]
    assert counts.tolist() == [3, 1] and inv.tolist() == [0, 0, 1, 0]
    t, c, i = zs.dedupe_captions([])
    assert t == [] and c.size == 0 and i.size == 0


def test_class_names_and_mask() -> None:
    names = zs.class_names()
    assert len(names) == C and names[0] == "Speech" and names[-1] == "Field recording"
    assert set(zs.GENERIC_CLASSES) <= set(names)  # every generic name is a real class
    mask = zs.class_mask(zs.ZeroShotConfig())
    assert mask.sum() == C - len(zs.GENERIC_CLASSES)
    assert zs.class_mask(zs.ZeroShotConfig(drop_generic=False)).all()
    assert zs._synonyms("Bee, wasp, etc.") == ["Bee", "wasp"]


@pytest.mark.parametrize("variant,dim", [("profile", C), ("sentence", E), ("hybrid", C + E)])
def test_vectors_shapes_norms_and_matching(
    variant: str, dim: int, fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    cfg = zs.ZeroShotConfig(variant=variant, top_k=3)
    assert cfg.dim == dim
    mask = zs.class_mask(cfg)
    kept = np.flatnonzero(mask)[[10, 200, 400]]
    # a caption that *is* a class name, and a clip that scores only that class
    caps = zs.caption_vectors_from_embeddings(fake_classes[kept], cfg)  # [3, dim]
    scores = np.full((3, 7, C), 0.01, np.float32)  # [N, T, C] frames
    scores[np.arange(3), :, kept] = 0.9
    aud = zs.audio_vectors(scores, cfg)
    assert caps.shape == aud.shape == (3, dim) and aud.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(caps, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(aud, axis=1), 1.0, atol=1e-5)
    assert ((aud @ caps.T).argmax(axis=1) == np.arange(3)).all()
    # [N, C] clip scores equal the mean over frames
    np.testing.assert_allclose(zs.audio_vectors(scores.mean(1), cfg), aud, atol=1e-6)


def test_generic_classes_are_ignored(
    fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    cfg = zs.ZeroShotConfig(variant="sentence", top_k=1)
    names = zs.class_names()
    dog, room = names.index("Bark"), names.index("Inside, small room")
    s = np.zeros((1, C), np.float32)
    s[0, dog], s[0, room] = 0.3, 0.9  # the room tag is stronger but says nothing
    np.testing.assert_allclose(zs.audio_vectors(s, cfg)[0], fake_classes[dog], atol=1e-6)
    prof = zs.caption_profiles(fake_classes[[room]], zs.ZeroShotConfig())
    assert prof[0, room] == 0.0 and abs(prof.sum() - 1) < 1e-5


def test_hybrid_inner_product_is_weighted_cosines(
    fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    rng = np.random.default_rng(1)
    sent = rng.normal(size=(4, E)).astype(np.float32)
    sent /= np.linalg.norm(sent, axis=1, keepdims=True)
    scores = rng.uniform(size=(2, C)).astype(np.float32)
    h = zs.ZeroShotConfig(variant="hybrid", alpha=0.3)
    p, s = replace(h, variant="profile"), replace(h, variant="sentence")
    got = zs.audio_vectors(scores, h) @ zs.caption_vectors_from_embeddings(sent, h).T
    want = (
        0.3 * zs.audio_vectors(scores, p) @ zs.caption_vectors_from_embeddings(sent, p).T
        + 0.7 * zs.audio_vectors(scores, s) @ zs.caption_vectors_from_embeddings(sent, s).T
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_config_validation_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ConfigMismatchError, match="variant"):
        zs.ZeroShotConfig(variant="nope")
    with pytest.raises(ConfigMismatchError, match="temperature"):
        zs.ZeroShotConfig(temperature=0)
    with pytest.raises(ConfigMismatchError):
        zs.pool_scores(np.zeros((2, 10), np.float32), zs.ZeroShotConfig())
    cfg = zs.ZeroShotConfig(variant="profile", top_k=3)
    save_config(cfg, tmp_path / "zs.json")
    back = load_config(zs.ZeroShotConfig, tmp_path / "zs.json")
    check_config(cfg, back, "zero-shot index")
    with pytest.raises(ConfigMismatchError, match="temperature"):
        check_config(cfg, replace(back, temperature=0.2), "zero-shot index")


@pytest.mark.slow
def test_shipped_text_side_puts_captions_near_their_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path))
    cfg = zs.ZeroShotConfig()
    names = zs.class_names()
    k = zs.class_name_vectors(cfg)
    assert k.shape == (C, E)
    prof = zs.caption_profiles(
        zs._encoder("minilm").encode(["A dog barks repeatedly", "Rain falls on a tin roof"]), cfg
    )
    top = [{names[i] for i in np.argsort(-p)[:5]} for p in prof]
    assert top[0] & {"Bark", "Dog", "Bow-wow", "Canidae, dogs, wolves", "Yip"}
    assert top[1] & {"Rain", "Rain on surface", "Raindrop"}
    # a clip scoring "Bark" retrieves the dog caption from a tiny corpus
    corpus = [
        "A dog barks repeatedly",
        "Rain falls on a tin roof",
        "A man speaks",
        "An engine idles",
    ]
    texts, counts, caps = zs.corpus_vectors(corpus + ["a dog barks repeatedly."], cfg)
    assert texts == corpus and counts.tolist() == [2, 1, 1, 1] and caps.shape == (4, E)
    s = np.zeros((1, C), np.float32)
    s[0, names.index("Bark")], s[0, names.index("Dog")] = 0.8, 0.6
    assert (zs.audio_vectors(s, cfg) @ caps.T).argmax() == 0
    assert zs.embedder_id(cfg).startswith("zeroshot-sentence-")
    assert zs.resolve_config(cfg).text_fingerprint == zs._encoder("minilm").fingerprint


# Reference sets of a small corpus, lower case and unpunctuated, so that pycocoevalcap's
# whitespace split and zeroshot.words agree.
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
        for g in {g for r in refs for g in zs._ngrams(r)}:
            df[g] = df.get(g, 0) + 1
    idf = {g: math.log(len(_CIDER_REFS)) - math.log(d) for g, d in df.items()}
    for hyp in _CIDER_HYPS:
        scorer = CiderScorer(n=4, sigma=6.0)
        for refs in _CIDER_REFS:
            scorer += (hyp, refs)
        _, want = scorer.compute_score()
        got = [zs.ciderd_agreement([hyp], refs, [1.0] * len(refs), idf)[0] for refs in _CIDER_REFS]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_ciderd_consensus_is_each_captions_agreement_with_the_rest() -> None:
    """Each pooled caption's score is its expected CIDEr-D (ciderd_agreement) plus the recall
    weight times its mean unigram F-mean, against the other captions of its pool, weighted;
    a repeated text still counts its other copies."""
    from audiocap_cli.decoding import unigram_fmean

    idf = zs.ngram_idf([c for refs in _CIDER_REFS for c in refs])
    pool = _CIDER_REFS[0] + _CIDER_HYPS + ["a dog barks"]  # "a dog barks" twice
    w = np.linspace(0.5, 2.0, len(pool))
    for rw in (0.0, 3.0):
        got = zs.ciderd_consensus([pool, pool[:2], []], [w, w[:2], []], idf, rw)
        for i, cap in enumerate(pool):
            others = [c for j, c in enumerate(pool) if j != i]
            wo = np.delete(w, i)
            want = zs.ciderd_agreement([cap], others, wo, idf)[0]
            want += rw * np.average(
                unigram_fmean([zs.words(cap)], [zs.words(c) for c in others])[0], weights=wo
            )
            assert got[0][i] == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert got[1][0] == pytest.approx(
            zs.ciderd_agreement(pool[:1], pool[1:2], [1.0], idf)[0]
            + rw * unigram_fmean([zs.words(pool[0])], [zs.words(pool[1])])[0, 0]
        )
        assert len(got[2]) == 0


def test_ciderd_agreement_weights_and_edge_cases() -> None:
    idf = zs.ngram_idf([c for refs in _CIDER_REFS for c in refs])
    refs = ["a dog barks", "rain falls on a roof"]
    one = zs.ciderd_agreement(["a dog barks", "rain falls"], refs[:1], [1.0], idf)
    # weights average the per-reference scores; a repeated reference adds its weight
    both = zs.ciderd_agreement(["a dog barks", "rain falls"], refs, [3.0, 1.0], idf)
    other = zs.ciderd_agreement(["a dog barks", "rain falls"], refs[1:], [1.0], idf)
    np.testing.assert_allclose(both, 0.75 * one + 0.25 * other)
    np.testing.assert_allclose(
        zs.ciderd_agreement(["a dog barks"], [refs[0], refs[0]], [1.0, 2.0], idf), one[:1]
    )
    assert one[0] > one[1] and other[1] > other[0]
    # clipping: saying "dog barks" twice gains nothing over saying it once; the length penalty
    # then makes the repeat lose
    rep = zs.ciderd_agreement(["a dog barks", "a dog barks and a dog barks"], refs[:1], [1.0], idf)
    assert rep[0] > rep[1]
    assert zs.ciderd_agreement([], refs, [1.0, 1.0], idf).shape == (0,)
    np.testing.assert_array_equal(zs.ciderd_agreement(["a dog"], refs, [0.0, 0.0], idf), [0.0])
    # without an idf every n-gram weighs 1: "a dog" against itself matches its 1- and 2-grams
    # fully and has no 3- or 4-grams, so CIDEr-D = 10 x (1 + 1 + 0 + 0) / 4
    np.testing.assert_allclose(zs.ciderd_agreement(["a dog"], ["a dog"], [1.0], None), [5.0])
