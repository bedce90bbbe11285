"""How a captioner finds a window's guidance captions: one :class:`Retrieval` per kind of
``ModelConfig.retrieval``, chosen once from the model directory by :func:`load_retrieval`.

``triplet``   the paper's trained retriever: an embedding of the encoder frames
``mean``      mean-pooled encoder frames (the paper's 1NN baseline, over the index)
``labels``    label space (labelspace.py): the clip's pooled class scores against the corpus
              clips' label sets; guidance is the most typical of a pool of their captions
``zeroshot``  the text bridge (zeroshot.py): class scores and captions in one sentence space

The captioner asks each the same things: the window's scores as retrieval reads them, query
vectors, how many neighbours to ask the index for, (guidance, evidence) from those neighbours,
each guidance caption's distance, and what a decoder's audio branch reads when it does not read
encoder frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import AudiocapError
from .index import CaptionIndex, Hit, guidance

if TYPE_CHECKING:
    from ..pipeline.modeldir import ModelConfig, ModelDir
    from ..text.agreement import Evidence


class Retrieval(Protocol):
    """One kind of retrieval, as a :class:`captioner.Captioner` uses it."""

    name: str  # `eval --scope all`'s row for captioning by retrieval alone
    embedder: str  # the IndexConfig.embedder an index built for it records
    # Whether the pool's own most typical caption may be printed instead of the decoder's
    # (DecodingOptions.pool_margin): fitted on label-space pools of 100 captions, so those only.
    pool_caption: bool

    def window_scores(self, scores: np.ndarray, audible: int) -> np.ndarray:
        """A window's class scores ``[T, C]`` as retrieval and the decoder read them, given how
        many of its frames hold audio (the rest is the zero padding of a short window)."""
        ...

    def vectors(self, frames: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        """Query vectors ``[W, E]`` of windows ``frames [W, T, D]`` (window scores ``[W, ., C]``)."""
        ...

    def query_size(self, k: int) -> int:
        """Index entries to ask for per query, for ``k`` guidance captions."""
        ...

    def retrieval_of(self, hits: list[list[Hit]], k: int) -> tuple[list[list[str]], list[Evidence]]:
        """(``k`` guidance captions, evidence) per query: what the decoder is guided by, and the
        captions with weights that the hypothesis selection weighs hypotheses against."""
        ...

    def distances(self, row: list[Hit]) -> dict[str, float]:
        """Guidance caption -> distance of the index entry it came from (the nearest one)."""
        ...

    def audio_vector(self, scores: np.ndarray | None, d_a: int) -> np.ndarray | None:
        """``[W, 1, d_a]``: what a decoder whose audio branch does not read encoder frames reads
        instead, one vector per window; None where this kind has none of that size."""
        ...


def _nearest_guidance(
    hits: list[list[Hit]], k: int
) -> tuple[list[list[str]], list[tuple[list[str], list[float]]]]:
    """The K nearest clips' captions, which are also the evidence, equally weighted."""
    guid = [guidance(row, k) for row in hits]
    return guid, [(g, [1.0] * len(g)) for g in guid]


def _first_caption_distances(row: list[Hit]) -> dict[str, float]:
    return {h.captions[0]: h.distance for h in row}


@dataclass
class _Frames:
    """Retrieval by encoder frames (the paper's kinds): scores unread, the K nearest clips'
    captions as guidance."""

    embed: Callable[[np.ndarray], np.ndarray]
    embedder: str
    pool_caption = False

    def window_scores(self, scores: np.ndarray, audible: int) -> np.ndarray:
        return scores  # as cached: their training saw padded windows too

    def vectors(self, frames: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        return self.embed(frames)

    def query_size(self, k: int) -> int:
        return k

    def retrieval_of(
        self, hits: list[list[Hit]], k: int
    ) -> tuple[list[list[str]], list[tuple[list[str], list[float]]]]:
        return _nearest_guidance(hits, k)

    def distances(self, row: list[Hit]) -> dict[str, float]:
        return _first_caption_distances(row)

    def audio_vector(self, scores: np.ndarray | None, d_a: int) -> np.ndarray | None:
        return None


class Triplet(_Frames):
    """The paper's retriever: the trained embedding of the frames."""

    @property
    def name(self) -> str:
        from ..evaluation.evaluate import TRIPLET_RETRIEVAL

        return TRIPLET_RETRIEVAL

    @classmethod
    def load(cls, md: ModelDir, cfg: ModelConfig, index: CaptionIndex, encoder_fp: str) -> Triplet:
        from .retriever import embed, load_retriever, retriever_id

        net = load_retriever(md.retriever, encoder_fp)
        return cls(lambda frames: embed(net, frames), retriever_id(md.retriever))


@dataclass
class MeanPool(_Frames):
    """1NN on mean-pooled raw encoder frames."""

    encoder: str = ""

    @property
    def name(self) -> str:
        from ..evaluation.evaluate import nn_name

        return nn_name(self.encoder) + " (index)"

    @classmethod
    def load(cls, md: ModelDir, cfg: ModelConfig, index: CaptionIndex, encoder_fp: str) -> MeanPool:
        from .retriever import mean_pool

        return cls(mean_pool, f"mean:{encoder_fp}", cfg.encoder)


def _pooled(scores: np.ndarray, audible: int, cfg: Any) -> np.ndarray:
    """``[1, C]``: a window's scores pooled over its audible frames only. YAMNet scores a short
    window's zero padding "Silence" at ~1.0, which pooled over all frames reached the query and
    the decoder input of every clip under the window length."""
    from .zeroshot import pool_scores

    return pool_scores(scores[None, :audible], cfg)


class LabelSpace:
    """Label-space retrieval (labelspace.LabelRetriever): the query is the pooled class scores;
    guidance the K most typical captions of a pool gathered from the nearest label sets."""

    name = "Label-Retrieval"
    pool_caption = True

    def __init__(self, labels: Any) -> None:  # labelspace.LabelRetriever
        self.labels = labels

    @classmethod
    def load(
        cls, md: ModelDir, cfg: ModelConfig, index: CaptionIndex, encoder_fp: str
    ) -> LabelSpace:
        from .labelspace import LabelRetriever

        return cls(LabelRetriever(index, md.index))

    @property
    def embedder(self) -> str:
        return self.labels.embedder

    def window_scores(self, scores: np.ndarray, audible: int) -> np.ndarray:
        return _pooled(scores, audible, self.labels.cfg)

    def vectors(self, frames: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        return self.labels.vectors(scores)

    def query_size(self, k: int) -> int:
        return max(self.labels.sets_per_query, k)

    def retrieval_of(
        self, hits: list[list[Hit]], k: int
    ) -> tuple[list[list[str]], list[tuple[list[str], list[float]]]]:
        pools = self.labels.pools(hits)
        return self.labels.rerank(pools, k), pools

    def distances(self, row: list[Hit]) -> dict[str, float]:
        per = self.labels.cfg.per_set  # an entry is a label set: any of its pooled captions
        return {c: h.distance for h in reversed(row) for c in h.captions[:per]}

    def audio_vector(self, scores: np.ndarray | None, d_a: int) -> np.ndarray | None:
        if scores is None or d_a != scores.shape[-1]:
            return None
        from .labelspace import pool_scores  # the clip's pooled class scores, one frame

        return np.clip(pool_scores(scores, self.labels.cfg), 0.0, 1.0)[:, None, :]


class ZeroShot:
    """The text bridge: class scores and captions in one sentence space (zeroshot.py); guidance
    the K most typical of the ``rerank_pool`` nearest captions (none: the K nearest)."""

    name = "Tag-Retrieval"
    pool_caption = False

    def __init__(self, cfg: Any) -> None:  # zeroshot.ZeroShotConfig
        from .zeroshot import embedder_id

        self.cfg = cfg
        self.embedder = embedder_id(cfg)

    @classmethod
    def load(cls, md: ModelDir, cfg: ModelConfig, index: CaptionIndex, encoder_fp: str) -> ZeroShot:
        from .zeroshot import load_config_of

        return cls(load_config_of(md.index))

    def window_scores(self, scores: np.ndarray, audible: int) -> np.ndarray:
        return _pooled(scores, audible, self.cfg)

    def vectors(self, frames: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        from .zeroshot import audio_vectors

        return audio_vectors(scores, self.cfg)  # type: ignore[arg-type]

    def query_size(self, k: int) -> int:
        return max(self.cfg.rerank_pool or k, k)

    def retrieval_of(
        self, hits: list[list[Hit]], k: int
    ) -> tuple[list[list[str]], list[tuple[list[str], list[float]]]]:
        if not self.cfg.rerank_pool:
            return _nearest_guidance(hits, k)
        from ..text.agreement import consensus_rerank

        pools = [([h.captions[0] for h in row], [1.0] * len(row)) for row in hits]
        return consensus_rerank([p for p, _ in pools], top=k), pools

    def distances(self, row: list[Hit]) -> dict[str, float]:
        return _first_caption_distances(row)

    def audio_vector(self, scores: np.ndarray | None, d_a: int) -> np.ndarray | None:
        if scores is None:
            return None
        from .zeroshot import audio_vectors

        return audio_vectors(scores, self.cfg).astype(np.float32)[:, None, :]


# ModelConfig.retrieval -> its kind
KINDS: dict[str, Any] = {
    "triplet": Triplet,
    "mean": MeanPool,
    "labels": LabelSpace,
    "zeroshot": ZeroShot,
}


def load_retrieval(
    md: ModelDir, cfg: ModelConfig, index: CaptionIndex, encoder_fp: str
) -> Retrieval:
    """The model's retrieval (``cfg.retrieval``), checked against the index it queries
    (``encoder_fp``: the fingerprint of the encoder features it reads)."""
    kind = KINDS.get(cfg.retrieval)
    if kind is None:
        raise AudiocapError(f"unknown retrieval {cfg.retrieval!r}: one of {', '.join(KINDS)}")
    out: Retrieval = kind.load(md, cfg, index, encoder_fp)
    if index.config.embedder != out.embedder:
        raise AudiocapError(
            f"{md.index}: built with embedder {index.config.embedder}, but the model's "
            f"retriever is {out.embedder}; rebuild it with `audiocap build-index`"
        )
    return out
