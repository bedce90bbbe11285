"""Tests of audiocap_cli.text.bertscore and .similarity: exact BERTScore, all-pairs labels,
persistence, clip level.

Reference values come from the bert_score package itself (run on the same tiny random model
or the shipped MiniLM). Tolerance 1e-5 on F1 (float32 sums; observed <= 3e-7).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocap_cli.errors import AudiocapError, ConfigMismatchError, ModelNotFoundError
from audiocap_cli.text import bertscore as B
from audiocap_cli.text import similarity as S

TOL = 1e-5
WORDS = (
    "a dog barks man speaks woman talks car passes engine idles birds chirp wind blows rain "
    "falls loudly softly while and then water runs door slams people cheer"
).split()
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "captions"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer 32-d random BERT with a word-level vocab, saved as a local folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tinybert")
    (d / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    BertTokenizer(vocab_file=str(d / "vocab.txt"), model_max_length=64).save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(d)
    return str(d)


def _captions(n: int, seed: int = 0, dup: int = 0) -> list[str]:
    rng = random.Random(seed)
    caps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    return caps + caps[:dup]


def _brute(cfg: S.SimilarityConfig, caps: list[str]) -> np.ndarray:
    """[N, N] exact F1 of every caption pair (diagonal = self F1)."""
    n = len(caps)
    a, b = zip(*itertools.product(range(n), repeat=2))
    return B.pairwise_bertscore([caps[i] for i in a], [caps[i] for i in b], cfg).reshape(n, n)


def _bert_score_f1(
    model: str, layers: int, cands: list[str], refs: list, idf: bool = False
) -> np.ndarray:
    bert_score = pytest.importorskip("bert_score")
    return bert_score.score(cands, refs, model_type=model, num_layers=layers, idf=idf)[2].numpy()


# ----------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("idf", [False, True])
def test_pairwise_matches_bert_score_package(tiny_model: str, idf: bool) -> None:
    caps = _captions(80, seed=1)
    rng = random.Random(2)
    cands = [rng.choice(caps) for _ in range(150)]
    refs = [rng.choice(caps) for _ in range(150)]
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2, idf=idf)
    ours = B.pairwise_bertscore(cands, refs, cfg)
    ref = _bert_score_f1(tiny_model, 2, cands, refs, idf)
    # bert_score keeps a negative token maximum only for the longest caption of its batch
    # (others see padding zeros); our clamp follows the padded case -- accept either there.
    prep = B.prepare(cands + refs, cfg, idf_source=refs)
    raw = B.greedy_f1(prep.emb, B.rows_of(prep, cands), B.rows_of(prep, refs), clamp=False).numpy()
    err = np.minimum(np.abs(ours - ref), np.abs(raw - ref))
    assert err.max() < TOL
    assert np.mean(np.abs(ours - ref) < TOL) > 0.9  # the clamped value is bert_score's usual one


def test_pairwise_properties(tiny_model: str) -> None:
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2)
    f = B.pairwise_bertscore(
        ["a dog barks", "birds chirp", "", "a dog barks"],
        ["birds chirp", "a dog barks", "a dog", "a dog barks"],
        cfg,
    )
    assert abs(f[0] - f[1]) < 1e-6  # F1 is symmetric
    assert f[2] == 0.0  # empty caption scores 0, as bert_score
    assert abs(f[3] - 1.0) < 1e-5
    assert B.pairwise_bertscore([], [], cfg).shape == (0,)
    with pytest.raises(ValueError):
        B.pairwise_bertscore(["a"], [], cfg)


def test_dense_kernel_equals_sparse(tiny_model: str) -> None:
    caps = _captions(70, seed=3)
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2)
    prep = B.prepare(caps, cfg, None)
    n = len(prep.strings)
    dense = B.dense_f1(prep.emb, torch.arange(n), prep.emb, torch.arange(n))
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    sparse = B.greedy_f1(prep.emb, a.reshape(-1), b.reshape(-1)).view(n, n)
    assert dense is not None and torch.allclose(dense, sparse, atol=1e-6)
    # and the pooled lower bound really bounds F1 from below
    lb = prep.emb.pooled @ prep.emb.pooled.T
    assert bool((lb <= sparse + 1e-5).all())


def test_multi_ref_and_top_bertscore(tiny_model: str) -> None:
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2)
    corpus = _captions(40, seed=4, dup=3)
    queries = [tuple(_captions(3, seed=10 + q)) for q in range(5)]
    full = np.stack(
        [B.pairwise_bertscore([c] * len(corpus), corpus, cfg) for q in queries for c in q]
    )
    per_q = full.reshape(5, 3, -1).max(1)  # [Q, corpus]
    exclude = [[int(np.argmax(per_q[0]))], [], [], [], []]
    idx, sc = B.top_bertscore(queries, corpus, 4, cfg, exclude=exclude)
    masked = per_q.copy()
    masked[0, exclude[0][0]] = -np.inf
    for q in range(5):
        assert np.allclose(sc[q], np.sort(masked[q])[::-1][:4], atol=1e-6)
        assert np.allclose(masked[q][idx[q]], sc[q], atol=1e-6)
    assert exclude[0][0] not in idx[0]
    i2, s2 = B.top_bertscore(queries[:1], corpus[:2], 3, cfg)
    assert i2[0, 2] == -1 and np.isinf(s2[0, 2])
    m = B.multi_ref_bertscore([queries[0][0], queries[1][0]], [corpus[:5], corpus[5:7]], cfg)
    assert np.allclose(m, [full[0, :5].max(), full[3, 5:7].max()], atol=1e-6)
    ref = _bert_score_f1(tiny_model, 2, [queries[0][0]], [corpus[:5]])
    assert abs(m[0] - ref[0]) < TOL


# ----------------------------------------------------------------------------- all-pairs labels


def test_labels_exact_mode_equals_brute_force(tiny_model: str) -> None:
    caps = _captions(60, seed=5, dup=4)
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2, candidate_cos=-1.0, threshold=0.6)
    labels = S.similarity_labels(caps, cfg)
    full = _brute(cfg, caps)
    off = ~np.eye(len(caps), dtype=bool)
    lo, hi = full[off].min(), full[off].max()
    assert abs(labels.raw_min - lo) < 1e-5 and abs(labels.raw_max - hi) < 1e-5
    want = (full > lo + 0.6 * (hi - lo)) & off
    got = np.zeros_like(want)
    for i in range(len(caps)):
        nb, scores = labels.neighbours(i)
        got[i, nb] = True
        assert np.allclose(scores, (full[i, nb] - lo) / (hi - lo), atol=1e-5)
        assert i not in nb
    assert (got == want).all()
    assert (got == got.T).all()


def test_labels_pruned_are_exact_subset(tiny_model: str) -> None:
    caps = _captions(120, seed=6, dup=5)
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2, threshold=0.6)
    labels = S.similarity_labels(caps, cfg)
    full = _brute(cfg, caps)
    for i in range(len(caps)):
        nb, _ = labels.neighbours(i)
        assert (full[i, nb] > labels.raw_threshold - 1e-6).all()  # no false positives, ever
    # duplicated captions are always each other's neighbours
    assert len(caps) - 5 in labels.neighbours(0)[0]
    progress: list[int] = []
    S.similarity_labels(caps[:30], cfg, progress=progress.append)
    assert sum(progress) == 100


def test_save_load_and_cache(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path / "cache"))
    caps = _captions(40, seed=7, dup=2)
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2, threshold=0.6)
    labels = S.cached_similarity_labels(caps, cfg, tmp_path / "lab")
    assert (tmp_path / "lab" / "config.json").is_file()
    back = S.SimilarityLabels.load(tmp_path / "lab", cfg, caps)
    for field in ("indptr", "indices", "scores"):
        assert np.array_equal(getattr(back, field), getattr(labels, field))
    assert back.raw_threshold == pytest.approx(labels.raw_threshold)
    with pytest.raises(ConfigMismatchError):
        S.SimilarityLabels.load(tmp_path / "lab", dataclasses_replace(cfg, threshold=0.5), caps)
    with pytest.raises(ConfigMismatchError):
        S.SimilarityLabels.load(tmp_path / "lab", cfg, caps[:-1])
    with pytest.raises(ModelNotFoundError):
        S.SimilarityLabels.load(tmp_path / "nothing", cfg, caps)

    calls: list[int] = []
    real = S.similarity_labels

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(S, "similarity_labels", counting)
    S.cached_similarity_labels(caps, cfg, tmp_path / "lab")
    assert calls == []  # reused
    S.cached_similarity_labels(caps + ["rain falls"], cfg, tmp_path / "lab")
    assert calls == [1]  # captions changed: recomputed
    S.cached_similarity_labels(
        caps + ["rain falls"], dataclasses_replace(cfg, threshold=0.65), tmp_path / "lab"
    )
    assert calls == [1, 1]  # config changed: recomputed
    assert S.SimilarityLabels.load(tmp_path / "lab").cfg.threshold == 0.65


def dataclasses_replace(cfg: S.SimilarityConfig, **kw: object) -> S.SimilarityConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_config_and_model_errors(tmp_path: Path) -> None:
    with pytest.raises(AudiocapError):
        S.SimilarityConfig(threshold=1.5)
    with pytest.raises(AudiocapError):
        S.SimilarityConfig(clip_rule="median")
    with pytest.raises(ModelNotFoundError):
        B.pairwise_bertscore(["a"], ["b"], S.SimilarityConfig(model=str(tmp_path / "no-model")))


# ----------------------------------------------------------------------------- clip level


def test_clip_similarity_rules(tiny_model: str) -> None:
    cfg = S.SimilarityConfig(model=tiny_model, num_layers=2, threshold=0.6)
    single = [(c,) for c in _captions(30, seed=8, dup=2)]
    labels = S.similarity_labels([c for (c,) in single], cfg)
    out = S.clip_similarity(single, cfg, labels=labels)
    for i, nb in enumerate(out):
        assert np.array_equal(nb, labels.neighbours(i)[0])
    clips = [tuple(_captions(3, seed=20 + i)) for i in range(25)] + [tuple(_captions(3, seed=20))]
    flat = [c for cl in clips for c in cl]
    lab = S.similarity_labels(flat, cfg)
    res = {
        r: S.clip_similarity(clips, dataclasses_replace(cfg, clip_rule=r), labels=lab)
        for r in ("mean", "match", "max")
    }
    for i in range(len(clips)):
        assert i not in res["max"][i]
        assert set(res["mean"][i]) <= set(res["match"][i]) | set(res["max"][i])
        assert set(res["match"][i]) <= set(res["max"][i])
        assert set(res["mean"][i]) <= set(res["max"][i])
    assert 25 in res["mean"][0] and 0 in res["mean"][25]  # identical clips agree under every rule
    with pytest.raises(ConfigMismatchError):
        S.clip_similarity(clips[:3], cfg, labels=lab)


# ----------------------------------------------------------------------------- real weights / data


@pytest.mark.slow
def test_minilm_matches_bert_score_package() -> None:
    cands = [
        "A dog barks loudly",
        "a man speaks",
        "Birds chirp while a car passes by",
        "wind blows hard into a microphone",
        "An engine idles and revs up",
    ]
    refs = [
        "A dog is barking",
        "A woman talks over a crowd",
        "birds are singing and a vehicle passes",
        "wind",
        "a car engine running",
    ]
    cfg = S.SimilarityConfig()
    ours = B.pairwise_bertscore(cands, refs, cfg)
    ref = _bert_score_f1(B._resolve_model("minilm"), 6, cands, refs)
    assert np.abs(ours - ref).max() < TOL
    # a reference value recorded from bert_score 0.3.13 + all-MiniLM-L6-v2 layer 6
    assert ours[0] == pytest.approx(0.76555324, abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "audiocaps_train.csv").is_file(), reason="../shared/data not present"
)
def test_real_captions_labels_recall() -> None:
    import csv

    with open(SHARED / "audiocaps_train.csv", newline="", encoding="utf-8") as f:
        caps = [r["caption"] for r in csv.DictReader(f)][:250]
    cfg = S.SimilarityConfig()
    labels = S.similarity_labels(caps, cfg)
    exact = S.similarity_labels(caps, dataclasses_replace(cfg, candidate_cos=-1.0))
    got = {(i, int(j)) for i in range(len(caps)) for j in labels.neighbours(i)[0]}
    want = {(i, int(j)) for i in range(len(caps)) for j in exact.neighbours(i)[0]}
    assert got <= want and len(want) > 0
    assert len(got) / len(want) >= 0.99
