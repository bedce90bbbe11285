"""The flow of one clip, for many files: audio -> frames (cached) -> embedding -> K nearest
clips' captions -> guided decoder -> one record per window.

``Captioner`` loads a model directory once; ``caption_files`` streams records of many files to
a writer, batching files through the encoder, the index and the decoder, and turning each file
that fails into an error record instead of stopping the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import fingerprint
from .errors import AudiocapError, AudioError
from .features import ClipFeatures, FeatureCache
from .index import CaptionIndex, Hit, guidance
from .model import ModelDir
from .records import CaptionRecord, Guide, RecordWriter


@dataclass(frozen=True)
class CaptionOptions:
    """How ``audiocap caption`` runs (none of these change a model)."""

    # The paper's beam width; 1 = greedy. Beam 8 gives the hypothesis selection more to choose
    # from, for twice the decoding: METEOR / CIDEr-D val 22.0 / 66.1 -> 22.0 / 67.1, real clips
    # 12.6 / 32.5 -> 12.3 / 33.3 (`python bench/quality/grounded_report.py --no-ablations --beam 8
    # --repeat-penalty 0`, measured before the penalty).
    beam_size: int = 4
    max_len: int = 30  # tokens per caption
    no_repeat_ngram: int = 3  # see decoding.DecodingOptions
    # which beam hypothesis is printed (decoding.DecodingOptions.select); compare with
    # `python bench/quality/grounded_report.py --no-ablations --select consensus|guidance|score`
    select: str = "consensus"
    agreement: str = "ciderd"  # decoding.DecodingOptions.agreement: CIDEr-D, the index's idf
    recall_weight: float = 3.0  # decoding.DecodingOptions.recall_weight
    # The retrieved pool's own most typical caption (CIDEr-D + 3 F-mean against the rest of the
    # pool) is printed instead of the decoder's when it agrees with the pool by more than this
    # margin above the chosen hypothesis (decoding.DecodingOptions.pool_margin; None: never).
    # On the default model (METEOR / CIDEr-D; `python bench/quality/grounded_report.py --no-ablations
    # --pool-margin M`), AudioCaps val with simulated input, three draws: never 21.9 / 68.5,
    # 21.8 / 68.7, 22.0 / 69.3; 0.1 22.5 / 70.2, 22.3 / 70.9, 22.1 / 70.7. The 137 real sound
    # events 19.4 / 78.1 -> 19.7 / 79.7; the 200 one-second urban scenes lose METEOR 10.4 ->
    # 9.7. Margins 0, 0.05, 0.1, 0.15, 0.2 on draw 0: val METEOR 22.2, 22.4, 22.5, 22.5, 22.4.
    # Label-space models only: their pools hold 100 captions, for which the margin was measured;
    # the paper's retrievers' evidence is the K guidance captions themselves.
    pool_margin: float | None = 0.1
    # Log-prob off a hypothesis each time it says a content word again (decoding.DecodingOptions
    # .repeat_penalty). On the default model the degenerate "A baby laughs and a baby laughs"
    # went from 16.4% of val captions to 7.9% (human references: 6.4%) and distinct words from
    # 196 to 207; METEOR / CIDEr-D val 22.0 / 66.1 -> 22.0 / 66.2, real clips 12.6 / 32.5 ->
    # 12.8 / 32.7, paired intervals holding 0 but for real METEOR (+0.3, +0.1 .. +0.5). Penalty
    # 1: val 21.9 / 66.8, real 12.8 / 32.4, 12.9% repeats (`python bench/quality/grounded_report.py
    # --no-ablations --repeat-penalty P`; exact-word matching then, stems now). The real-clip
    # figures in these comments were measured with short clips' padding in the scores (see
    # Captioner.window_scores), which the report no longer includes.
    repeat_penalty: float = 2.0
    min_len: int = 1  # tokens before EOS may end a caption (decoding.DecodingOptions.min_len)
    batch_size: int = 16  # files per batch through encoder, index and decoder
    k: int | None = None  # guidance captions per clip (default: the model's K)
    long_audio: str = "crop"  # "crop": first window only; "windows": caption every window
    hop_seconds: float | None = None  # window step with "windows" (default: the window length)
    device: str = "cpu"


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


class Captioner:
    """Everything ``caption`` needs from a model directory, loaded once."""

    def __init__(
        self,
        model_dir: str | Path,
        opts: CaptionOptions = CaptionOptions(),
        cache: FeatureCache | None = None,
    ) -> None:
        from .encoders import load_encoder

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
        self._embed: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
        self.zcfg = None
        self.labels = None  # label-space retrieval (labelspace.LabelRetriever)
        if self.cfg.retrieval == "triplet":
            from .retriever import embed, load_retriever, retriever_id

            net = load_retriever(self.md.retriever, enc_fp)
            self._check_embedder(retriever_id(self.md.retriever))
            self._embed = lambda frames, scores: embed(net, frames)
        elif self.cfg.retrieval == "mean":
            from .retriever import mean_pool

            self._check_embedder(f"mean:{enc_fp}")
            self._embed = lambda frames, scores: mean_pool(frames)
        elif self.cfg.retrieval == "labels":
            from .labelspace import LabelRetriever

            self.labels = LabelRetriever(self.index, self.md.index)
            self._check_embedder(self.labels.embedder)
            self._embed = lambda frames, scores: self.labels.vectors(scores)  # type: ignore[union-attr]
        else:
            from . import zeroshot

            self.zcfg = zeroshot.load_config_of(self.md.index)
            self._check_embedder(zeroshot.embedder_id(self.zcfg))
            self._embed = lambda frames, scores: zeroshot.audio_vectors(scores, self.zcfg)  # type: ignore[arg-type]
        self.decoder = None
        if decoders := self.md.decoders():
            from .decoder import load_decoders

            self.decoder = load_decoders(decoders, device=opts.device)

    def _check_embedder(self, expected: str) -> None:
        if self.index.config.embedder != expected:
            raise AudiocapError(
                f"{self.md.index}: built with embedder {self.index.config.embedder}, but the model's "
                f"retriever is {expected}; rebuild it with `audiocap build-index`"
            )

    def window_scores(self, f: ClipFeatures, w: int) -> np.ndarray | None:
        """Class scores of window ``w`` as retrieval and the decoder read them: for a model that
        reads scores (label-space, zero-shot), ``[1, C]`` pooled over the frames that hold audio;
        else the window's ``[T, C]`` as cached (None for an encoder without a classifier).

        A window shorter than the policy's length (a clip under 10 s, a long file's tail) is
        zero-padded before the encoder, and YAMNet scores the padding "Silence" at ~1.0. Pooled
        over all 20 frames, that reached the query and the decoder input of every short clip: on
        the 337 labelled real clips (0.2-10 s) the pooled scores differed by up to 1.0 in 328.
        """
        if f.scores is None:
            return None
        s = f.scores[w]
        cfg = self.labels.cfg if self.labels is not None else self.zcfg
        if cfg is None:  # the paper's retrievers read frames; their training saw padded windows too
            return s
        from .zeroshot import pool_scores

        audible = max(1, min(len(s), self.encoder.num_frames(f.ends[w] - f.starts[w])))
        return pool_scores(s[None, :audible], cfg)  # type: ignore[arg-type]

    # -- one batch of files ------------------------------------------------------------------

    def retrieve(
        self,
        frames: np.ndarray,
        scores: np.ndarray | None,
        exclude_ids: Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        """Nearest index entries of windows ``frames [W, T, D]`` (class ``scores [W, T, C]``)."""
        vectors = np.asarray(self._embed(frames, scores), dtype=np.float32)
        pool = self.zcfg.rerank_pool if self.zcfg is not None and self.zcfg.rerank_pool else self.k
        if self.labels is not None:
            pool = self.labels.sets_per_query
        return self.index.query(vectors, k=max(pool, self.k), exclude_ids=exclude_ids)

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
        if self.labels is not None:
            pools = self.labels.pools(hits)
            return self.labels.rerank(pools, self.k), pools
        if self.zcfg is not None and self.zcfg.rerank_pool:
            from .zeroshot import consensus_rerank

            pools = [([h.captions[0] for h in row], [1.0] * len(row)) for row in hits]
            return consensus_rerank([p for p, _ in pools], top=self.k), pools
        guid = [guidance(row, self.k) for row in hits]
        return guid, [(g, [1.0] * len(g)) for g in guid]

    def distances(self, row: list[Hit]) -> dict[str, float]:
        """Guidance caption -> distance of the index entry it came from (the nearest one)."""
        if self.labels is not None:  # an entry is a label set: any of its pooled captions
            per = self.labels.cfg.per_set
            return {c: h.distance for h in reversed(row) for c in h.captions[:per]}
        return {h.captions[0]: h.distance for h in row}

    def generate(
        self,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None = None,
    ) -> list[str]:
        """Captions of windows from their guidance (``evidence``: see :meth:`retrieval_of`);
        without a decoder, the first guidance caption."""
        return [d.text for d in self.decode_windows(guid, frames, scores, evidence)]

    def decode_windows(
        self,
        guid: list[list[str]],
        frames: np.ndarray,
        scores: np.ndarray | None,
        evidence: list[tuple[list[str], list[float]]] | None = None,
    ) -> list[Any]:
        """:meth:`generate`'s captions as ``decoding.Decoded``, ``retrieved`` where the caption
        is a retrieved one (the pool's own, or the first guidance caption without a decoder)."""
        from .decoding import Decoded, DecodingOptions, decode

        if self.decoder is None:
            return [
                Decoded(g[0] if g else "", float("nan"), float("nan"), (), retrieved=bool(g))
                for g in guid
            ]
        audio = self.decoder_audio(frames, scores)
        opts = DecodingOptions(
            beam_size=self.opts.beam_size,
            max_len=self.opts.max_len,
            no_repeat_ngram=self.opts.no_repeat_ngram,
            select=self.opts.select,
            min_len=self.opts.min_len,
            recall_weight=self.opts.recall_weight,
            repeat_penalty=self.opts.repeat_penalty,
            agreement=self.opts.agreement,
            pool_margin=self.opts.pool_margin if self.labels is not None else None,
        )
        # CIDEr-D's idf: of every caption the index holds (about 1 s, once, for 50k captions)
        idf = (
            self.index.ngram_idf()
            if opts.select != "score" and opts.agreement == "ciderd"
            else None
        )
        return decode(self.decoder, guid, audio, opts, evidence=evidence, idf=idf)

    def decoder_audio(self, frames: np.ndarray, scores: np.ndarray | None) -> Any:
        """What the decoder's audio branch reads: encoder frames ``[W, T, D]``, or for a
        text-only decoder the zero-shot audio vector as one frame ``[W, 1, E]``."""
        import torch

        cfg = self.decoder.cfg  # type: ignore[union-attr]
        if not cfg.use_audio:
            return None
        if cfg.d_a == frames.shape[-1]:
            return torch.from_numpy(np.ascontiguousarray(frames)).to(self.opts.device)
        if self.labels is not None and scores is not None and cfg.d_a == scores.shape[-1]:
            from .labelspace import pool_scores  # the clip's pooled class scores, one frame

            vec = np.clip(pool_scores(scores, self.labels.cfg), 0.0, 1.0)[:, None, :]
            return torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)).to(
                self.opts.device
            )
        if self.zcfg is not None and scores is not None:
            from .zeroshot import audio_vectors

            vec = audio_vectors(scores, self.zcfg).astype(np.float32)[:, None, :]
            return torch.from_numpy(vec).to(self.opts.device)
        raise AudiocapError(
            f"decoder expects {cfg.d_a}-dim audio frames, the encoder gives {frames.shape[-1]}"
        )

    def caption_batch(self, paths: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Records of each path: one per window, or one error record."""
        t0 = time.perf_counter()
        feats = self.cache.get_many(
            list(paths), self.encoder, self.policy, batch_size=self.opts.batch_size
        )
        t_feat = time.perf_counter() - t0
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
                    _Window(path, f.starts[w], f.ends[w], f.frames[w], self.window_scores(f, w))
                )
                owner.append(i)
        if not windows:
            return out
        # Retrieval and decoding take the windows _WINDOW_CHUNK at a time: a 10-hour file in
        # windows mode is 3,600 windows, and stacking them all would copy its features again.
        hits: list[list[Hit]] = []
        guid: list[list[str]] = []
        captions: list[Any] = []  # decoding.Decoded
        t_ret = t_dec = 0.0
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
            captions += self.decode_windows(g, frames, scores, ev)
            t_ret, t_dec = t_ret + t2 - t1, t_dec + time.perf_counter() - t2
        per = {"features": t_feat, "retrieval": t_ret, "decoding": t_dec}
        n = len(windows)
        for w, row, g, cap, i in zip(windows, hits, guid, captions, owner):
            dist = self.distances(row)
            out[i].append(
                CaptionRecord(
                    w.path,
                    round(w.start, 3),
                    round(w.end, 3),
                    cap.text,
                    guidance=[Guide(c, round(dist[c], 6) if c in dist else None) for c in g],
                    seconds={k: round(v / n, 4) for k, v in per.items()},
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
    """The paths not yet in ``writer.done`` (a resumed output); the others count as progress."""
    todo = [p for p in paths if p not in writer.done]
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
