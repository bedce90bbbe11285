"""The flow of one clip, for many files: audio -> frames (cached) -> embedding -> K nearest
clips' captions -> guided decoder -> one record per window.

``Captioner`` loads a model directory once; ``caption_files`` streams records of many files to
a writer, batching files through the encoder, the index and the decoder, and turning each file
that fails into an error record instead of stopping the run (``Captioner.caption`` yields the
same records to Python callers). Two things are chosen once, when the model loads: how a window
finds its guidance (the model's :class:`retrieval.Retrieval`) and how its caption is written
from it (:class:`Captions`: the guided decoder, or with ``fast`` or a model without a decoder
the retrieved pool's consensus caption).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import threads
from ..audio.features import ClipFeatures, FeatureCache
from ..config import fingerprint
from ..errors import AudiocapError, AudioError
from ..generation.decoding import Decoded, DecodingOptions, decode
from ..retrieval.index import CaptionIndex, Hit
from ..retrieval.kinds import Retrieval, load_retrieval
from .confidence import confidence
from .modeldir import ModelDir
from .records import CaptionRecord, Guide, RecordWriter

#: Tags below this score are left out of a record: a class the tagger gives under 1% is noise,
#: and its rounded score says nothing.
TAG_FLOOR = 0.01


@dataclass(frozen=True)
class CaptionOptions:
    """How ``audiocap caption`` runs (none of these change a model)."""

    # How captions are searched for and which hypothesis is printed; its defaults are caption's
    # (fitted with bench/quality/grounded_report.py, see decoding.DecodingOptions).
    decoding: DecodingOptions = DecodingOptions()
    batch_size: int = 16  # files per batch through encoder, index and decoder
    k: int | None = None  # guidance captions per clip (default: the model's K)
    long_audio: str = "crop"  # "crop": first window only; "windows": caption every window
    hop_seconds: float | None = None  # window step with "windows" (default: the window length)
    device: str = "cpu"
    # The retrieved pool's consensus caption instead of the decoder's (ConsensusCaptions): the
    # decoder is neither loaded nor run (`caption --fast`).
    fast: bool = False
    tags: int = 5  # the tagger's top classes in each record (0: no "tags" field)


# Windows per retrieval + decoding step: far more than a batch of clips in crop mode (so that
# batching is as before), a bounded copy of features (256 x ~120 KB) for a long file's windows.
_WINDOW_CHUNK = 256


@dataclass
class _Window:
    path: str
    start: float
    end: float
    frames: np.ndarray  # [T, D]
    scores: (
        np.ndarray | None
    )  # [T, C], or [1, C] pooled over the audible frames (Captioner.window_scores)
    tags: list[tuple[str, float]] | None  # Captioner.tags_of


def _audible(encoder: Any, f: ClipFeatures, w: int) -> int:
    """Frames of window ``w`` of ``f`` that hold audio (the rest is zero padding)."""
    assert f.scores is not None
    return max(1, min(len(f.scores[w]), encoder.num_frames(f.ends[w] - f.starts[w])))


class Captions(Protocol):
    """How a window's caption is written from what retrieval found; chosen once, when the
    :class:`Captioner` is built."""

    def write(
        self,
        cap: Captioner,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None,
    ) -> list[Decoded]:
        """One caption per window from its K guidance captions ``guid`` and ``evidence`` (see
        :meth:`Captioner.retrieval_of`), frames ``[W, T, D]`` and class scores."""
        ...


class ConsensusCaptions:
    """The first guidance caption, ``retrieved``: for label-space and zero-shot models the
    retrieved pool's most typical caption (consensus re-ranked), for the paper's retrievers the
    nearest clip's. ``caption --fast``, and every model without a decoder."""

    def write(
        self,
        cap: Captioner,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None,
    ) -> list[Decoded]:
        return [
            Decoded(g[0] if g else "", float("nan"), float("nan"), (), retrieved=bool(g))
            for g in guid
        ]


class DecoderCaptions:
    """The guided decoder's beam search and hypothesis choice (``decoding.decode`` with the
    captioner's ``opts.decoding``); with a label-space pool, the pool's own caption where it
    agrees clearly better (``pool_margin``)."""

    def write(
        self,
        cap: Captioner,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None,
    ) -> list[Decoded]:
        audio = cap.decoder_audio(frames, scores)
        opts = cap.opts.decoding
        if not cap.retrieval.pool_caption:
            opts = dataclasses.replace(opts, pool_margin=math.inf)
        # CIDEr-D's idf: of every caption the index holds (about 1 s, once, for 50k captions)
        idf = cap.index.ngram_idf() if opts.select != "score" else None
        return decode(cap.decoder, guid, audio, opts, evidence=evidence, idf=idf)


class Captioner:
    """Everything ``caption`` needs from a model directory, loaded once."""

    def __init__(
        self,
        model_dir: str | Path,
        opts: CaptionOptions = CaptionOptions(),
        cache: FeatureCache | None = None,
    ) -> None:
        from ..audio.encoders import load_encoder

        threads.configure()  # once per process: torch's threads for the CPUs it may use
        self.md = ModelDir(model_dir)
        self.cfg = self.md.load()
        self.opts = opts
        self.k = opts.k or self.cfg.k
        self.policy = self.cfg.policy(opts.long_audio, opts.hop_seconds)
        self.cache = cache or FeatureCache()
        self.encoder = load_encoder(self.cfg.encoder, self.cfg.encoder_weights, device=opts.device)
        enc_fp = fingerprint(self.encoder.config)
        self.index = CaptionIndex.load(self.md.index)
        if self.index.config.encoder != enc_fp:
            raise AudiocapError(
                f"{self.md.index}: built with encoder features {self.index.config.encoder}, "
                f"but {self.cfg.encoder} gives {enc_fp}; rebuild it with `audiocap build-index`"
            )
        self.retrieval: Retrieval = load_retrieval(self.md, self.cfg, self.index, enc_fp)
        self.class_names = self.encoder.class_names()  # empty: no classifier, no tags
        self.decoder = None
        self.captions: Captions = ConsensusCaptions()
        if not opts.fast and self.md.has_decoder():
            from ..generation.decoder import load_decoder

            self.decoder = load_decoder(self.md.decoder, device=opts.device)
            self.captions = DecoderCaptions()
        # Seconds spent in each stage by this captioner so far, summed over its batches (a run's
        # stage times; records carry none: a batch's stages cannot be split among its clips).
        # "captions" includes each caption's confidence.
        self.stage_seconds = {"features": 0.0, "retrieval": 0.0, "captions": 0.0}

    def window_scores(self, f: ClipFeatures, w: int) -> np.ndarray | None:
        """Class scores of window ``w`` as retrieval and the decoder read them
        (:meth:`retrieval.Retrieval.window_scores`: for a model that reads scores, ``[1, C]``
        pooled over the frames that hold audio; else the window's ``[T, C]`` as cached), None
        for an encoder without a classifier. A window shorter than the policy's length (a clip
        under 10 s, a long file's tail) is zero-padded before the encoder."""
        if f.scores is None:
            return None
        return self.retrieval.window_scores(f.scores[w], _audible(self.encoder, f, w))

    def tags_of(self, f: ClipFeatures, w: int) -> list[tuple[str, float]] | None:
        """The tagger's ``opts.tags`` top classes of window ``w`` as (name, score rounded to 3
        decimals), best first, those under :data:`TAG_FLOOR` left out; from the scores
        retrieval reads (:meth:`window_scores`; a kind that reads frames gets them max-pooled
        over the audible frames). None without tags: ``opts.tags`` 0, or an encoder without a
        classifier."""
        scores = self.window_scores(f, w)
        if self.opts.tags <= 0 or scores is None or len(self.class_names) != scores.shape[-1]:
            return None
        audible = _audible(self.encoder, f, w)
        pooled = scores[0] if len(scores) == 1 else scores[:audible].max(axis=0)
        top = np.argsort(-pooled, kind="stable")[: self.opts.tags]
        return [
            (self.class_names[c], round(float(pooled[c]), 3)) for c in top if pooled[c] >= TAG_FLOOR
        ]

    # -- one batch of files ------------------------------------------------------------------

    def retrieve(
        self,
        frames: np.ndarray,
        scores: np.ndarray | None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        """Nearest index entries of windows ``frames [W, T, D]`` (class ``scores [W, T, C]``)."""
        vectors = np.asarray(self.retrieval.vectors(frames, scores), dtype=np.float32)
        return self.index.query(
            vectors, k=self.retrieval.query_size(self.k), exclude_ids=exclude_ids
        )

    def guidance_of(self, hits: list[list[Hit]]) -> list[list[str]]:
        """K guidance captions per window (see :meth:`retrieval_of`)."""
        return self.retrieval_of(hits)[0]

    def retrieval_of(
        self, hits: list[list[Hit]]
    ) -> tuple[list[list[str]], list[tuple[list[str], list[float]]]]:
        """(K guidance captions, evidence) per window. Guidance: the K nearest clips' captions,
        or for the label and zero-shot indexes the K most typical of the retrieved pool
        (consensus re-ranking). Evidence, what ``select="consensus"`` weighs hypotheses
        against: that pool with its weights, else the guidance itself."""
        return self.retrieval.retrieval_of(hits, self.k)

    def distances(self, row: list[Hit]) -> dict[str, float]:
        """Guidance caption -> distance of the index entry it came from (the nearest one)."""
        return self.retrieval.distances(row)

    def generate(
        self,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None = None,
    ) -> list[str]:
        """Captions of windows from their guidance (``evidence``: see :meth:`retrieval_of`);
        with ``fast`` or without a decoder, the first guidance caption."""
        return [d.text for d in self.decode_windows(guid, frames, scores, evidence)]

    def decode_windows(
        self,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None = None,
    ) -> list[Decoded]:
        """:meth:`generate`'s captions as ``decoding.Decoded`` (by :attr:`captions`),
        ``retrieved`` where the caption is a retrieved one (the pool's own, or the first
        guidance caption without a decoder)."""
        return self.captions.write(self, guid, frames, scores, evidence)

    def confidence(
        self, captions: Sequence[Decoded], evidence: Sequence[tuple[list[str], list[float]]]
    ) -> list[float]:
        """Each window's ``confidence`` (pipeline.confidence): its caption's agreement with its
        evidence pool, n-grams weighted by the idf of the index's captions."""
        return confidence([c.text for c in captions], evidence, self.index.ngram_idf())

    def decoder_audio(self, frames: np.ndarray, scores: np.ndarray | None) -> Any:
        """What the decoder's audio branch reads: encoder frames ``[W, T, D]``, or for a
        text-only decoder one vector per window ``[W, 1, E]`` (the retrieval's
        :meth:`~retrieval.Retrieval.audio_vector`)."""
        import torch

        cfg = self.decoder.cfg  # type: ignore[union-attr]
        if not cfg.use_audio:
            return None
        if cfg.d_a == frames.shape[-1]:
            return torch.from_numpy(np.ascontiguousarray(frames)).to(self.opts.device)
        vec = self.retrieval.audio_vector(scores, cfg.d_a)
        if vec is None:
            raise AudiocapError(
                f"decoder expects {cfg.d_a}-dim audio frames, the encoder gives {frames.shape[-1]}"
            )
        return torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)).to(self.opts.device)

    def caption(self, paths: str | Path | Iterable[str | Path]) -> Iterator[dict[str, Any]]:
        """The records ``audiocap caption`` prints for audio files ``paths`` (not expanded:
        no directories or globs), as dicts: one per window, or one error record per file that
        fails. Lazy: ``opts.batch_size`` files at a time."""
        todo = iter([paths] if isinstance(paths, (str, Path)) else paths)
        while batch := [str(p) for p in itertools.islice(todo, max(1, self.opts.batch_size))]:
            for recs in self.caption_batch(batch):
                yield from recs

    def caption_batch(self, paths: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Records of each path: one per window, or one error record. The time of each stage
        is added to :attr:`stage_seconds`."""
        t0 = time.perf_counter()
        feats = self.cache.get_many(
            list(paths), self.encoder, self.policy, batch_size=self.opts.batch_size
        )
        self.stage_seconds["features"] += time.perf_counter() - t0
        windows: list[_Window] = []
        owner: list[int] = []
        out: list[list[dict[str, Any]]] = [[] for _ in paths]
        for i, (path, f) in enumerate(zip(paths, feats)):
            if isinstance(f, AudioError):
                out[i] = [CaptionRecord.failure(path, f.cause, type(f).__name__).to_json()]
                continue
            assert isinstance(f, ClipFeatures)
            for w in range(len(f.starts)):
                windows.append(
                    _Window(
                        path,
                        f.starts[w],
                        f.ends[w],
                        f.frames[w],
                        self.window_scores(f, w),
                        self.tags_of(f, w),
                    )
                )
                owner.append(i)
        if not windows:
            return out
        # Retrieval and decoding take the windows _WINDOW_CHUNK at a time: a 10-hour file in
        # windows mode is 3,600 windows, and stacking them all would copy its features again.
        hits: list[list[Hit]] = []
        guid: list[list[str]] = []
        captions: list[Decoded] = []
        confs: list[float] = []
        for c in range(0, len(windows), _WINDOW_CHUNK):
            part = windows[c : c + _WINDOW_CHUNK]
            frames = np.stack([w.frames for w in part])
            scores = (
                None if any(w.scores is None for w in part) else np.stack([w.scores for w in part])
            )  # type: ignore[misc]
            t1 = time.perf_counter()
            hits += (h := self.retrieve(frames, scores))
            g, ev = self.retrieval_of(h)
            guid += g
            t2 = time.perf_counter()
            captions += (d := self.decode_windows(g, frames, scores, ev))
            confs += self.confidence(d, ev)
            self.stage_seconds["retrieval"] += t2 - t1
            self.stage_seconds["captions"] += time.perf_counter() - t2
        for w, row, g, conf, cap, i in zip(windows, hits, guid, confs, captions, owner):
            dist = self.distances(row)
            out[i].append(
                CaptionRecord(
                    w.path,
                    round(w.start, 3),
                    round(w.end, 3),
                    cap.text,
                    confidence=conf,
                    tags=w.tags,
                    guidance=[Guide(c, round(dist[c], 6) if c in dist else None) for c in g],
                    retrieved=True if cap.retrieved else None,
                ).to_json()
            )
        return out


def caption_files(
    captioner: Captioner,
    paths: Sequence[str],
    writer: RecordWriter,
    advance: Callable[[int], None] | None = None,
    on_error: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, int]:
    """Caption ``paths`` (those not already in ``writer.done``) in batches; returns
    (captioned, failed). Every file's records are written together, so a kill loses at most
    the batch in flight and never half a file."""
    todo = pending(paths, writer, advance)
    bs = max(1, captioner.opts.batch_size)
    stream = (
        recs for s in range(0, len(todo), bs) for recs in captioner.caption_batch(todo[s : s + bs])
    )
    return write_records(stream, writer, advance, on_error)


def pending(
    paths: Sequence[str], writer: RecordWriter, advance: Callable[[int], None] | None = None
) -> list[str]:
    """The paths not yet in ``writer.done`` (a resumed output; compared by the file they name,
    whatever the spelling: RecordWriter.is_done); the others count as progress."""
    todo = [p for p in paths if not writer.is_done(p)]
    if advance is not None and len(todo) < len(paths):
        advance(len(paths) - len(todo))
    return todo


def write_records(
    stream: Iterable[list[dict[str, Any]]],
    writer: RecordWriter,
    advance: Callable[[int], None] | None = None,
    on_error: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, int]:
    """Write each file's records as they arrive (one write per file); returns (captioned, failed)."""
    ok = failed = 0
    for recs in stream:
        writer.write(recs)
        if recs and "error" in recs[0]:
            failed += 1
            if on_error is not None:
                on_error(recs[0])
        else:
            ok += 1
        if advance is not None:
            advance(1)
    return ok, failed
