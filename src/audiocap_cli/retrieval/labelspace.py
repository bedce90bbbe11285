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
:func:`agreement.consensus_rerank`).

Labels never reach captioning: there the query is the clip's audio. For training and for
validation without audio, ``labelsim.simulate`` turns labels into scores that look like an
encoder's (see its docstring for how it was fitted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.encoders.yamnet import NUM_CLASSES
from ..errors import ConfigMismatchError
from ..vectors import l2_normalize

POOLS = ("max", "mean")
# Label sets a query walks: enough to fill any pool (AudioCaps train's sets hold 1 to ~4k clips).
SETS_PER_QUERY = 64
IDF_SMOOTH = 1.0  # idf = log((N + 1) / (df + 1)) + 1 (scikit-learn's smooth idf): never 0


@dataclass(frozen=True)
class LabelSpaceConfig:
    """How labels and encoder class scores become comparable vectors.

    The defaults are fitted with bench/fits/labelspace_grid.py (the consensus caption's METEOR
    and CIDEr-D on AudioCaps val with input simulated by ``labelsim``, and on the labelled real
    clips with real YAMNet scores); the query power with the decoder by
    bench/quality/grounded_report.py. See docs/experiments.md for the measurements.
    YAMNet fires on a class's ontology ancestors ("Animal" for a dog) that AudioSet labels often
    leave out, hence ``ancestors``. Captioning queries at ``score_power`` while the decoder's
    training guidance is retrieved at ``grounded.GUIDANCE_SCORE_POWER``.
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

    def __post_init__(self) -> None:
        problems = []
        if self.pool not in POOLS:
            problems.append(f"pool {self.pool!r} not one of {POOLS}")
        if self.score_power <= 0 or self.idf_power < 0 or self.set_power < 0:
            problems.append("score_power must be > 0, idf_power and set_power >= 0")
        if self.rerank_pool < 1 or self.per_set < 1:
            problems.append("rerank_pool and per_set must be >= 1")
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


def rerank(
    pools: Sequence[tuple[list[str], list[float]]], k: int, idf: dict[str, float] | None = None
) -> list[list[str]]:
    """The ``k`` most typical captions of each (pool, weights), best first, by the consensus
    TF-IDF cosine (``idf``: the corpus n-gram idf where ``LabelSpaceConfig.corpus_idf``, else
    each pool's own). Ties keep pool order."""
    from ..text.agreement import consensus_rerank

    caps, weights = [p for p, _ in pools], [w for _, w in pools]
    return consensus_rerank(caps, top=k, weights=weights, idf=idf)


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
        out.extend(rerank(pools, k, idf))
        if advance is not None:
            advance(len(pools))
    return out


# ---------------------------------------------------------------- persistence and captioning

CONFIG_NAME = "labelspace.json"  # beside the index: the LabelSpaceConfig it was built with
WEIGHTS_NAME = "class_weights.npy"  # [C] float32 class weights of the corpus vectors


def embedder_id(cfg: LabelSpaceConfig, weights: np.ndarray) -> str:
    """Identity of the labels/scores -> vector map, for ``IndexConfig.embedder``."""
    import hashlib

    from ..config import fingerprint

    w = hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float32).tobytes()).hexdigest()[:8]
    return f"labels-{fingerprint(cfg)}-{w}"


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
    from ..config import save_config

    save_config(cfg, folder / CONFIG_NAME)
    np.save(folder / WEIGHTS_NAME, np.asarray(weights, dtype=np.float32), allow_pickle=False)


class LabelRetriever:
    """Captioning-time label-space retrieval over a saved index: scores -> K guidance captions."""

    def __init__(self, index, folder: Path) -> None:  # index: index.CaptionIndex
        from ..config import load_config
        from ..errors import ModelNotFoundError

        self.cfg = load_config(LabelSpaceConfig, folder / CONFIG_NAME)
        path = folder / WEIGHTS_NAME
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path}: missing; rebuild the label index with `audiocap bootstrap`"
            )
        try:  # never unpickle: an object array (or any damage) is a one-line error naming the file
            self.weights = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ModelNotFoundError(
                f"{path}: not a saved float array ({e}); rebuild the label index with `audiocap bootstrap`"
            ) from None
        if self.weights.ndim != 1 or self.weights.dtype.kind != "f":
            raise ModelNotFoundError(
                f"{path}: expected a 1-D float array, found {self.weights.dtype} of shape "
                f"{self.weights.shape}; rebuild the label index with `audiocap bootstrap`"
            )
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
        return self.index.ngram_idf() if self.cfg.corpus_idf else None

    def pools(self, hits) -> list[tuple[list[str], list[float]]]:  # hits: list[list[index.Hit]]
        """Each query's pool: captions of its nearest label sets, with their consensus weights."""
        # unit vectors: squared L2 distance d = 2 - 2 cos
        return [
            gather_pool(((h.captions, None, 1.0 - h.distance / 2.0) for h in row), self.cfg)
            for row in hits
        ]

    def rerank(self, pools: Sequence[tuple[list[str], list[float]]], k: int) -> list[list[str]]:
        """The K most typical captions of each of :meth:`pools`."""
        return rerank(pools, k, self.idf())

    def guidance(self, hits, k: int) -> list[list[str]]:
        """K most typical captions of each query's nearest label sets."""
        return self.rerank(self.pools(hits), k)
