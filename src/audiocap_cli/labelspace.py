"""Label-space retrieval: captions found through the sound classes their clips contain.

A corpus clip is its AudioSet label vector in the audio encoder's class space (``audioset.py``);
a query clip is its pooled class scores from the encoder (YAMNet: 521 classes). Both become
unit vectors with the same class weighting, so their inner product is a cosine and an L2
hnswlib index ranks exactly by it.

Clips with the same label set have the same vector; they are indexed once (one *label set*
holding all their captions): AudioCaps train has 49,838 clips but only ~10k distinct sets, and
an HNSW graph of thousands of identical points searches badly. A query walks its nearest sets,
takes up to ``rerank_pool`` captions (at most ``per_set`` from any one set, in a fixed order),
and keeps the K most typical as guidance (:func:`rerank`: by the consensus TF-IDF cosine,
:func:`zeroshot.consensus_rerank`, or by expected CIDEr-D, :func:`zeroshot.ciderd_consensus`).

Labels never reach captioning: there the query is the clip's audio. For training and for
validation without audio, ``labelsim.simulate`` turns labels into scores that look like an
encoder's (see its docstring for how it was fitted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoders.yamnet import NUM_CLASSES
from .errors import ConfigMismatchError
from .vectors import l2_normalize

POOLS = ("max", "mean")
RERANKS = ("tfidf", "ciderd")
# Fields that choose among retrieved captions, not how scores and labels become vectors: left
# out of the index's embedder id, so indexes built before the fields existed stay valid (their
# labelspace.json lacks them and reads as the defaults, which are what they were built with).
RERANK_FIELDS = ("rerank", "rerank_recall_weight")
# Label sets a query walks: enough to fill any pool (AudioCaps train's sets hold 1 to ~4k clips).
SETS_PER_QUERY = 64
IDF_SMOOTH = 1.0  # idf = log((N + 1) / (df + 1)) + 1 (scikit-learn's smooth idf): never 0


@dataclass(frozen=True)
class LabelSpaceConfig:
    """How labels and encoder class scores become comparable vectors.

    Defaults chosen with bench/fits/labelspace_grid.py (consensus caption, METEOR / CIDEr-D x100) on
    AudioCaps val with input simulated by ``labelsim`` and on the 337 labelled real clips (real
    YAMNet). YAMNet fires on a class's ontology ancestors ("Animal" for a dog), AudioSet labels
    name them for only 65% of labels that have one: closing the corpus labels under the
    ontology (``ancestors``) lifts the real clips from 13.7 to 24.9 CIDEr-D at pool 50, power 1.
    Then power 3 with a pool of 100 gives val 21.2/58.3 and real 12.1/36.3, against 20.9/57.6
    and 12.4/31.6 for power 2 and pool 50; the earlier default (pool 50, power 0.5, labels
    as given) scores 19.3/44.6 and 11.6/16.6. idf class weights (20.6/56.5, 13.0/34.5) and
    ``set_power`` 4 (21.1/57.3, 12.1/34.6) lose on val; the corpus idf trades METEOR for
    CIDEr-D on both sets (20.5/60.6, 12.0/38.1).

    With the decoder, captioning queries at power 4 while the decoder's training guidance stays
    at 3 (``grounded.GUIDANCE_SCORE_POWER``): on the shipped decoder val 21.9/67.0 against
    21.9/65.8 and real 12.6/34.9 against 12.8/32.7, real CIDEr-D +2.2 (+0.3 .. +4.6) paired,
    and on the 137 real sound-event clips METEOR +1.6 (+0.3 .. +3.1), CIDEr-D +5.7 (+1.0 ..
    +11.8). Over three decoders (seeds 0-2) the mean gain is val +0.2/+1.8, real events
    +0.8/+2.5 (README, "Query calibration power 4"). Those real figures had short clips' zero
    padding in the scores; without it (``Captioner.window_scores``) the shipped decoder reads
    real 13.0/32.8 at power 4 against 13.0/31.1 at 3, the sound events 19.1/77.2 against
    18.9/72.7 (README, "Short clips").
    """

    audio_encoder: str = "yamnet"
    num_classes: int = NUM_CLASSES
    pool: str = "max"  # frames -> clip scores
    score_power: float = 4.0  # query weights = scores ** power (calibration: weak classes fade)
    idf_power: float = 0.0  # class weight = idf ** power on both sides (rare classes count more)
    rerank_pool: int = 100  # captions gathered per query for consensus re-ranking
    per_set: int = 100  # at most this many captions from one label set
    corpus_idf: bool = False  # consensus TF-IDF with the corpus idf (else the pool's own)
    ancestors: bool = True  # corpus labels closed under the ontology's is-a (audioset.Hierarchy)
    # consensus weight of a pooled caption = (cosine of its set to the query) ** set_power
    # (0: every pooled caption counts the same)
    set_power: float = 0.0
    # how a pool's most typical captions are found (RERANKS): "tfidf", the consensus TF-IDF
    # cosine; or "ciderd", each caption's expected CIDEr-D against the rest of the pool (corpus
    # idf) + rerank_recall_weight x METEOR's unigram F-mean, the agreement `caption` picks its
    # printed hypothesis by. "ciderd" + 3 makes the consensus caption better on AudioCaps val
    # (21.1/58.1 -> 22.1/65.6), worse on the real sound events (19.7/85.5 -> 19.7/74.3), and a
    # decoder trained on that guidance captions val worse (21.3/60.3 against 21.9/68.5; README,
    # "Guidance re-ranked by CIDEr-D"), so "tfidf" stays the default.
    rerank: str = "tfidf"
    rerank_recall_weight: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.pool not in POOLS:
            problems.append(f"pool {self.pool!r} not one of {POOLS}")
        if self.score_power <= 0 or self.idf_power < 0 or self.set_power < 0:
            problems.append("score_power must be > 0, idf_power and set_power >= 0")
        if self.rerank_pool < 1 or self.per_set < 1:
            problems.append("rerank_pool and per_set must be >= 1")
        if self.rerank not in RERANKS:
            problems.append(f"rerank {self.rerank!r} not one of {RERANKS}")
        if self.rerank_recall_weight < 0:
            problems.append("rerank_recall_weight must be >= 0")
        if problems:
            raise ConfigMismatchError("invalid label-space config: " + "; ".join(problems))


def class_weights(labels: np.ndarray, cfg: LabelSpaceConfig) -> np.ndarray:
    """``[C]`` class weights from the corpus labels ``[N, C]``: idf ** idf_power."""
    if cfg.idf_power == 0:
        return np.ones(labels.shape[1], dtype=np.float32)
    df = (labels > 0).sum(axis=0)
    idf = np.log((labels.shape[0] + IDF_SMOOTH) / (df + IDF_SMOOTH)) + 1.0
    return (idf**cfg.idf_power).astype(np.float32)


def pool_scores(scores: np.ndarray, cfg: LabelSpaceConfig) -> np.ndarray:
    """``[N, C]`` or ``[N, T, C]`` class scores -> ``[N, C]`` clip scores (the zero-shot pooling,
    which reads only ``cfg.pool`` and ``cfg.num_classes``)."""
    from .zeroshot import pool_scores as pool

    return pool(scores, cfg)  # type: ignore[arg-type]


def query_vectors(scores: np.ndarray, weights: np.ndarray, cfg: LabelSpaceConfig) -> np.ndarray:
    """Encoder class scores ``[N, (T,) C]`` -> unit query vectors ``[N, C]``."""
    return l2_normalize(np.clip(pool_scores(scores, cfg), 0.0, None) ** cfg.score_power * weights)


def label_vectors(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multi-hot labels ``[N, C]`` -> unit corpus vectors ``[N, C]``."""
    return l2_normalize(np.asarray(labels, dtype=np.float32) * weights)


@dataclass
class LabelCorpus:
    """Captions grouped by label set: ``vectors [U, C]`` unit rows, ``captions[u]`` (in a fixed
    shuffled order) and ``caption_ids[u]`` (the caption's position in the corpus)."""

    vectors: np.ndarray
    captions: list[list[str]]
    caption_ids: list[list[int]]
    weights: np.ndarray  # [C] class weights the vectors were built with

    @classmethod
    def build(
        cls, labels: np.ndarray, captions: Sequence[str], cfg: LabelSpaceConfig, seed: int = 0
    ) -> LabelCorpus:
        """One entry per distinct label set (clips without labels are left out)."""
        labels = np.asarray(labels, dtype=np.float32)
        keep = np.flatnonzero(labels.sum(axis=1) > 0)
        w = class_weights(labels[keep], cfg)
        # one bytes key per label set: np.unique over a 1-d void view is ~100x faster than axis=0
        packed = np.ascontiguousarray(np.packbits(labels[keep] > 0, axis=1))
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.random.default_rng(seed).permutation(len(keep))  # fixed caption order per set
        groups: list[list[int]] = [[] for _ in range(len(first))]
        for i in order:
            groups[inverse[i]].append(int(keep[i]))
        vecs = label_vectors(labels[keep[first]], w)
        return cls(vecs, [[captions[i] for i in g] for g in groups], groups, w)

    def sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.captions])


def nearest_sets(
    queries: np.ndarray, vectors: np.ndarray, m: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``m`` label sets ``[N, m]`` by cosine, best first, and their cosines ``[N, m]``."""
    m = min(m, len(vectors))
    out = np.zeros((len(queries), m), dtype=np.int64)
    cos = np.zeros((len(queries), m), dtype=np.float32)
    for s in range(0, len(queries), block):
        sims = queries[s : s + block] @ vectors.T
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        out[s : s + block] = np.take_along_axis(top, order, 1)
        cos[s : s + block] = np.take_along_axis(sims, out[s : s + block], 1)
    return out, cos


Group = tuple[
    Sequence[str], Sequence[int] | None, float
]  # a set's captions, their corpus ids, cosine


def gather_pool(
    groups: Iterable[Group], cfg: LabelSpaceConfig, exclude: set[int] | None = None
) -> tuple[list[str], list[float]]:
    """Captions of the nearest label sets (best set first), up to ``rerank_pool`` and at most
    ``per_set`` from one set, with their consensus weights (the set's cosine ** set_power).
    ``exclude``: corpus caption ids left out (the query clip's own captions, when it is in the
    corpus)."""
    pool: list[str] = []
    weights: list[float] = []
    for caps, ids, cos in groups:
        taken = 0
        w = max(float(cos), 1e-6) ** cfg.set_power
        for j, cap in enumerate(caps):
            if exclude and ids is not None and ids[j] in exclude:
                continue
            pool.append(cap)
            weights.append(w)
            taken += 1
            if taken >= cfg.per_set or len(pool) >= cfg.rerank_pool:
                break
        if len(pool) >= cfg.rerank_pool:
            break
    return pool, weights


def uses_corpus_idf(cfg: LabelSpaceConfig) -> bool:
    """Whether re-ranking reads the corpus n-gram idf (CIDEr-D always does)."""
    return cfg.corpus_idf or cfg.rerank == "ciderd"


def rerank(
    pools: Sequence[tuple[list[str], list[float]]],
    k: int,
    cfg: LabelSpaceConfig,
    idf: dict[str, float] | None = None,
) -> list[list[str]]:
    """The ``k`` most typical captions of each (pool, weights), best first, by ``cfg.rerank``
    (``idf``: the corpus n-gram idf where :func:`uses_corpus_idf`). Ties keep pool order."""
    from .zeroshot import ciderd_consensus, consensus_rerank

    caps, weights = [p for p, _ in pools], [w for _, w in pools]
    if cfg.rerank == "tfidf":
        return consensus_rerank(caps, top=k, weights=weights, idf=idf)
    scores = ciderd_consensus(caps, weights, idf, cfg.rerank_recall_weight)
    return [[p[i] for i in np.argsort(-s, kind="stable")[:k]] for p, s in zip(caps, scores)]


def corpus_guidance(
    corpus: LabelCorpus,
    scores: np.ndarray,
    cfg: LabelSpaceConfig,
    k: int,
    exclude: Sequence[set[int]] | None = None,
    idf: dict[str, float] | None = None,
    block: int = 2000,
    advance: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Guidance of many queries at once by exact search (training and validation).

    ``scores`` ``[N, C]`` clip scores (real or ``labelsim.simulate``); ``exclude[i]``: corpus
    caption ids query i must not see (leave-one-out for the corpus' own clips); ``advance(n)``
    is told of each block of queries done.
    """
    out: list[list[str]] = []
    for s in range(0, len(scores), block):
        q = query_vectors(scores[s : s + block], corpus.weights, cfg)
        ranked, cos = nearest_sets(q, corpus.vectors, SETS_PER_QUERY)
        pools = [
            gather_pool(
                ((corpus.captions[u], corpus.caption_ids[u], c) for u, c in zip(row, crow)),
                cfg,
                exclude[s + i] if exclude is not None else None,
            )
            for i, (row, crow) in enumerate(zip(ranked, cos))
        ]
        out.extend(rerank(pools, k, cfg, idf))
        if advance is not None:
            advance(len(pools))
    return out


# ---------------------------------------------------------------- persistence and captioning

CONFIG_NAME = "labelspace.json"  # beside the index: the LabelSpaceConfig it was built with
WEIGHTS_NAME = "class_weights.npy"  # [C] float32 class weights of the corpus vectors


def embedder_id(cfg: LabelSpaceConfig, weights: np.ndarray) -> str:
    """Identity of the labels/scores -> vector map, for ``IndexConfig.embedder``."""
    import hashlib

    from .config import fingerprint

    w = hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float32).tobytes()).hexdigest()[:8]
    return (
        f"labels-{fingerprint(cfg, exclude=RERANK_FIELDS)}-{w}"  # re-ranking leaves the vectors be
    )


def build_index(corpus: LabelCorpus, cfg: LabelSpaceConfig, encoder_fingerprint: str):
    """An hnswlib :class:`index.CaptionIndex` of the label sets (entry ``s<u>``: set u's captions)."""
    from .index import CaptionIndex, IndexConfig

    icfg = IndexConfig(
        dim=corpus.vectors.shape[1],
        embedder=embedder_id(cfg, corpus.weights),
        encoder=encoder_fingerprint,
        ef_search=max(200, 2 * SETS_PER_QUERY),
    )
    ids = [f"s{u}" for u in range(len(corpus.captions))]
    return CaptionIndex.build(corpus.vectors, ids, [tuple(c) for c in corpus.captions], icfg)


def save_extras(folder: Path, cfg: LabelSpaceConfig, weights: np.ndarray) -> None:
    """Write the config and class weights into an index folder (called inside its atomic save)."""
    from .config import save_config

    save_config(cfg, folder / CONFIG_NAME)
    np.save(folder / WEIGHTS_NAME, np.asarray(weights, dtype=np.float32), allow_pickle=False)


class LabelRetriever:
    """Captioning-time label-space retrieval over a saved index: scores -> K guidance captions."""

    def __init__(self, index, folder: Path) -> None:  # index: index.CaptionIndex
        from .config import load_config
        from .errors import ModelNotFoundError

        self.cfg = load_config(LabelSpaceConfig, folder / CONFIG_NAME)
        path = folder / WEIGHTS_NAME
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path}: missing; rebuild the label index with `audiocap bootstrap`"
            )
        self.weights = np.load(path, allow_pickle=False)
        self.index = index

    @property
    def embedder(self) -> str:
        return embedder_id(self.cfg, self.weights)

    def vectors(self, scores: np.ndarray) -> np.ndarray:
        """Class scores ``[W, T, C]`` -> query vectors ``[W, C]``."""
        return query_vectors(scores, self.weights, self.cfg)

    @property
    def sets_per_query(self) -> int:
        return min(SETS_PER_QUERY, len(self.index))

    def idf(self) -> dict[str, float] | None:
        return self.index.ngram_idf() if uses_corpus_idf(self.cfg) else None

    def pools(self, hits) -> list[tuple[list[str], list[float]]]:  # hits: list[list[index.Hit]]
        """Each query's pool: captions of its nearest label sets, with their consensus weights."""
        # unit vectors: squared L2 distance d = 2 - 2 cos
        return [
            gather_pool(((h.captions, None, 1.0 - h.distance / 2.0) for h in row), self.cfg)
            for row in hits
        ]

    def rerank(self, pools: Sequence[tuple[list[str], list[float]]], k: int) -> list[list[str]]:
        """The K most typical captions of each of :meth:`pools`."""
        return rerank(pools, k, self.cfg, self.idf())

    def guidance(self, hits, k: int) -> list[list[str]]:
        """K most typical captions of each query's nearest label sets."""
        return self.rerank(self.pools(hits), k)
