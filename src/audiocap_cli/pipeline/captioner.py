"""The flow of one clip, for many files: audio -> frames (cached) -> embedding -> K nearest
clips' captions -> guided decoder -> one record per window.

``Captioner`` loads a model directory once; ``caption_files`` streams records of many files to
a writer, batching files through the encoder, the index and the decoder, and turning each file
that fails into an error record instead of stopping the run (``Captioner.caption`` yields the
same records to Python callers). A long file in windows mode goes through alone, a chunk of
windows at a time from its decoding to its records, so that its first lines come early and
memory does not grow with its length (``Captioner.caption_stream``). Two things are chosen
once, when the model loads: how a window finds its guidance (the model's
:class:`retrieval.Retrieval`) and how its caption is written from it (:class:`Captions`: the
guided decoder, or with ``fast`` or a model without a decoder the retrieved pool's consensus
caption).
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
from ..audio.features import ClipFeatures, FeatureCache, encode_windows
from ..audio.io import SegmentStream, expected_windows
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


# Windows per retrieval + decoding step of a batch of files: far more than a batch of clips in
# crop mode (so that batching is as before), a bounded copy of features (256 x ~120 KB) for
# files in windows mode (a file longer than a batch streams instead: Captioner.streams).
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
        fails. Lazy: ``opts.batch_size`` files at a time, a long file in windows mode a chunk
        of windows at a time (:meth:`caption_stream`)."""
        todo = iter([paths] if isinstance(paths, (str, Path)) else paths)
        while batch := [str(p) for p in itertools.islice(todo, max(1, self.opts.batch_size))]:
            for _, recs, _ in self.caption_stream(batch):
                yield from recs

    def caption_batch(self, paths: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Records of each path: one per window, or one error record. The time of each stage
        is added to :attr:`stage_seconds`."""
        out: list[list[dict[str, Any]]] = [[] for _ in paths]
        for i, recs, _ in self.caption_stream(paths):
            out[i] += recs
        return out

    def streams(self, path: str) -> bool:
        """Whether ``path`` is captioned a chunk of windows at a time (:meth:`caption_stream`):
        in windows mode, a file whose header promises more windows than a batch holds. Its
        features then never go through the feature cache: held whole they would grow with
        the file (124 KB a window), and a file this long is rarely captioned twice."""
        if self.policy.long_audio != "windows":
            return False
        bs = max(1, self.opts.batch_size)
        try:
            n = expected_windows(path, self.policy, int(self.encoder.sample_rate), at_most=bs + 1)
        except AudioError:
            return False  # the batch reports it, as for any file
        return n > bs

    def caption_stream(
        self,
        paths: Sequence[str],
        resumed_until: Callable[[str], float | None] | None = None,
    ) -> Iterator[tuple[int, list[dict[str, Any]], bool]]:
        """Records of ``paths`` in order, as ``(i, records of paths[i], whether they end
        paths[i])``. A file in windows mode longer than a batch (:meth:`streams`), or one
        that ``resumed_until`` says a resumed output holds windows of, comes a chunk of
        ``opts.batch_size`` windows at a time, computed as they are needed (:meth:`_stream`:
        memory does not grow with its length, its first records come after a chunk's work);
        the others ``opts.batch_size`` files at a time, one piece per file. In windows mode,
        each file's final window carries ``"last": true``."""
        run: list[int] = []

        def batch() -> Iterator[tuple[int, list[dict[str, Any]], bool]]:
            for i, recs in zip(run, self._caption_files([paths[i] for i in run])):
                yield i, recs, True
            run.clear()

        for i, path in enumerate(paths):
            until = resumed_until(path) if resumed_until is not None else None
            if until is None and not self.streams(path):
                run.append(i)
                continue
            yield from batch()  # the files before it first: records stay in input order
            for recs, end in self._stream(path, until):
                yield i, recs, end
        yield from batch()

    def _caption_files(self, paths: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Records of a batch of files, all windows of all files at once (features through the
        cache)."""
        if not paths:
            return []
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
            windows += self._windows(path, f)
            owner += [i] * len(f.starts)
        for i, rec in zip(owner, self._caption_windows(windows)):
            out[i].append(rec)
        if self.policy.long_audio == "windows":
            for recs in out:
                if recs and "error" not in recs[-1]:
                    recs[-1]["last"] = True
        return out

    def _windows(self, path: str, f: ClipFeatures) -> list[_Window]:
        return [
            _Window(
                path,
                f.starts[w],
                f.ends[w],
                f.frames[w],
                self.window_scores(f, w),
                self.tags_of(f, w),
            )
            for w in range(len(f.starts))
        ]

    def _stream(
        self, path: str, until: float | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """Records of one file in windows mode, ``opts.batch_size`` windows at a time as
        ``(records, whether they end the file)``: decoded block by block
        (audio.SegmentStream), encoded, retrieved and captioned a chunk at a time, so that
        memory holds a chunk whatever the file's length. Windows that start at or before
        ``until`` (held by a resumed output) are decoded but neither encoded nor captioned.
        One chunk is held back until the next window is known, so that the file's final
        window is marked ``"last": true``; a file that fails partway ends with its error
        record, after its windows captioned so far."""
        sr = int(self.encoder.sample_rate)
        chunk = max(1, self.opts.batch_size)
        stream = SegmentStream(path, self.policy, sr)
        queue: list[tuple[np.ndarray, int, int]] = []  # (wave, start sample, real samples)
        t0 = time.perf_counter()
        try:
            for wave in stream:
                if until is not None and round(stream.start / sr, 3) <= until:
                    continue
                queue.append((wave, stream.start, stream.length))
                if len(queue) > chunk:
                    self.stage_seconds["features"] += time.perf_counter() - t0
                    yield self._caption_chunk(path, queue[:chunk], sr), False
                    queue = queue[chunk:]
                    t0 = time.perf_counter()
        except AudioError as e:
            self.stage_seconds["features"] += time.perf_counter() - t0
            if queue:
                yield self._caption_chunk(path, queue, sr), False
            yield [CaptionRecord.failure(path, e.cause, type(e).__name__).to_json()], True
            return
        self.stage_seconds["features"] += time.perf_counter() - t0
        recs = self._caption_chunk(path, queue, sr) if queue else []
        if recs:
            recs[-1]["last"] = True
        yield recs, True

    def _caption_chunk(
        self, path: str, queue: list[tuple[np.ndarray, int, int]], sr: int
    ) -> list[dict[str, Any]]:
        """Records of consecutive windows of one file: ``(wave, start sample, real samples)``."""
        t0 = time.perf_counter()
        frames, scores = encode_windows(
            self.encoder, [w for w, _, _ in queue], [n for _, _, n in queue]
        )
        f = ClipFeatures(
            frames,
            scores,
            tuple(s / sr for _, s, _ in queue),
            tuple((s + n) / sr for _, s, n in queue),
            0.0,  # not known before the file's end, and not read here
        )
        windows = self._windows(path, f)
        self.stage_seconds["features"] += time.perf_counter() - t0
        return self._caption_windows(windows)

    def _caption_windows(self, windows: list[_Window]) -> list[dict[str, Any]]:
        """One record per window, in order."""
        if not windows:
            return []
        # Retrieval and decoding take the windows _WINDOW_CHUNK at a time: a batch of files in
        # windows mode may hold many windows, and stacking them all would copy their features.
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
        out = []
        for w, row, g, conf, cap in zip(windows, hits, guid, confs, captions):
            dist = self.distances(row)
            out.append(
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
    """Caption ``paths`` (those ``writer`` does not already hold: :func:`pending`) in
    batches; returns (captioned, failed). Each file's records are written together, so a kill
    loses at most the batch in flight and never half a file; except a long file in windows
    mode (JSONL), whose windows are written a chunk at a time as they are captioned
    (:meth:`Captioner.caption_stream`), and which a resumed run picks up at its next window."""
    windows = captioner.policy.long_audio == "windows"
    todo = pending(paths, writer, advance, windows=windows)
    bs = max(1, captioner.opts.batch_size)
    until = writer.resumed_until if windows and writer.streams else None
    pieces = (
        (recs, end)
        for s in range(0, len(todo), bs)
        for _, recs, end in captioner.caption_stream(todo[s : s + bs], until)
    )
    return write_pieces(pieces, writer, advance, on_error)


def pending(
    paths: Sequence[str],
    writer: RecordWriter,
    advance: Callable[[int], None] | None = None,
    windows: bool = False,
) -> list[str]:
    """The paths not yet in ``writer.done`` (a resumed output; compared by the file they name,
    whatever the spelling: RecordWriter.is_done; with ``windows``, a windows-mode run, a file
    is done once its last window is written); the others count as progress."""
    todo = [p for p in paths if not writer.is_done(p, windows=windows)]
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
    return write_pieces(((recs, True) for recs in stream), writer, advance, on_error)


def write_pieces(
    pieces: Iterable[tuple[list[dict[str, Any]], bool]],
    writer: RecordWriter,
    advance: Callable[[int], None] | None = None,
    on_error: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, int]:
    """Write records as they arrive, ``(records, whether they end their file)`` in file
    order: each piece in one write where the writer streams (JSONL), else each file's pieces
    together; returns (captioned, failed), a file counting once, at its end (failed when it
    ends with an error record)."""
    ok = failed = 0
    held: list[dict[str, Any]] = []
    for recs, end in pieces:
        if not writer.streams:
            held += recs
            if not end:
                continue
            recs, held = held, []
        if recs:
            writer.write(recs)
        if not end:
            continue
        if recs and "error" in recs[-1]:
            failed += 1
            if on_error is not None:
                on_error(recs[-1])
        else:
            ok += 1
        if advance is not None:
            advance(1)
    return ok, failed
