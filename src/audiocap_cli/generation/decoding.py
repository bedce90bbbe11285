"""Greedy and beam search over a :class:`~audiocap_cli.generation.decoder.GuidedDecoder`.

:func:`decode` runs all clips of a chunk and all their beams as the rows of one batch: one
frozen-LM forward per step over only the newest token (KV cache, ``past_key_values``), the
guidance and audio memories projected once per clip, finished clips dropped from the batch.
Hypotheses never need padding (every row advances one token per step), so no masks either.

:func:`decode_naive` is the reference: one clip at a time, the whole prefix recomputed every
step. Both share the beam bookkeeping (:class:`_Beams`), so they must agree token for token.

Beam search follows whisper/HF: each step keeps the ``beam_size`` best non-EOS continuations;
EOS candidates ranked within the top ``beam_size`` are finished hypotheses; a clip stops once it
has ``beam_size`` finished ones (or at ``max_len``, when its live beams count as finished).
The winner maximises ``sum log p / penalty(length)``; ``beam_size=1`` is exactly greedy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AudiocapError
from ..text.agreement import Evidence, is_content_word, letter_runs, select_mbr, stem
from .decoder import Context, GuidedDecoder, pad_frames

SELECTS = ("score", "guidance", "consensus")


@dataclass(frozen=True)
class DecodingOptions:
    """How captions are searched for. The defaults are what ``audiocap caption`` runs; each was
    fitted with ``python bench/quality/grounded_report.py --no-ablations`` and the flag named
    beside it (see docs/experiments.md)."""

    beam_size: int = 4  # 1 = greedy (the paper's width; --beam)
    max_len: int = 30  # generated tokens per caption, EOS included
    # None: rank finished hypotheses by mean log-prob (sum / length); a float alpha: by
    # sum / ((5 + length) / 6) ** alpha (Wu et al. 2016, GNMT).
    length_penalty: float | None = None
    min_len: int = 1  # EOS is suppressed before this many tokens (no empty captions; --min-len)
    batch_size: int = 32  # clips per batched forward (x beam_size rows)
    # A hypothesis may not repeat any n-gram of this size (0 = off). Captions of a sound rarely
    # repeat a trigram, while an undertrained decoder loops ("a motor vehicle motor vehicle").
    # Token ids are compared, so "A baby cries and a baby cries" ("A" != " a") passes; comparing
    # them case-blind was tried and not kept (see docs/experiments.md).
    no_repeat_ngram: int = 3
    # Log-prob taken off a hypothesis each time it completes a content word it already said,
    # case-blind (0 = off): "A man is speaking and a man speaks", "Ducks quacking as ducks
    # quack". Soft, so "A man speaks and a woman speaks" may still win. Content words:
    # agreement.is_content_word, compared by agreement.stem (--repeat-penalty).
    repeat_penalty: float = 2.0
    # Which finished hypothesis is the caption: "score", the best by the ranking above; or a
    # minimum-Bayes-risk choice (agreement.select_mbr), the one of highest expected CIDEr-D
    # (with the corpus idf that `decode(idf=...)` is given) were the references like what
    # retrieval found: "consensus" against the retrieval's whole weighted pool
    # (`decode(evidence=...)`), "guidance" against the K guidance captions only (--select).
    select: str = "consensus"
    # Weight of the unigram F-mean (METEOR's recall-weighted harmonic mean) beside CIDEr-D in
    # that choice (--recall-weight).
    recall_weight: float = 3.0
    # With "consensus" and an evidence pool given to `decode` (else it is ignored): the
    # evidence's own most agreeing caption (its agreement with the rest of the evidence, itself
    # left out; agreement.ciderd_consensus) is printed instead when that agreement beats the
    # chosen hypothesis' by more than this; math.inf: never, the caption is always one of the
    # decoder's hypotheses. A hypothesis that copies an evidence caption also agrees with that
    # copy, so the margin is roughly the self-match it is credited with (1/100 of 10 + 3 with a
    # pool of 100). The captioner applies it to label-space pools only, the kind it was fitted
    # on (--pool-margin).
    pool_margin: float = 0.1

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise AudiocapError(f"decoding options: select {self.select!r} not one of {SELECTS}")
        if self.recall_weight < 0.0 or self.repeat_penalty < 0.0:
            raise AudiocapError("decoding options: recall_weight and repeat_penalty must be >= 0")
        if not self.pool_margin >= 0.0:
            raise AudiocapError("decoding options: pool_margin must be >= 0 (inf: never)")
        if self.beam_size < 1 or self.max_len < 1 or self.batch_size < 1 or self.min_len < 0:
            raise AudiocapError("decoding options: beam_size, max_len and batch_size must be >= 1")


@dataclass(frozen=True)
class Decoded:
    """One caption: its text, ranking score, summed log-prob and tokens (EOS stripped), and every
    finished hypothesis of its clip, best-ranked first (the caption is one of them unless
    ``retrieved``: a retrieved caption printed instead, see :func:`choose`)."""

    text: str
    score: float
    logprob: float
    tokens: tuple[int, ...]
    hypotheses: tuple[Decoded, ...] = ()
    retrieved: bool = False


class _Beams:
    """Beam bookkeeping for ``A`` active clips x ``k`` beams, shared by both search strategies."""

    def __init__(
        self,
        clips: int,
        k: int,
        opts: DecodingOptions,
        eos: int,
        suppress: Sequence[int],
        words: tuple[dict[int, str], torch.Tensor] | None = None,
    ) -> None:
        """``words``: every token's text and the ids that end a word, for ``repeat_penalty``
        (:func:`_word_ends`)."""
        self.k, self.opts, self.eos = k, opts, eos
        self.words = words if opts.repeat_penalty > 0 else None
        self.suppress = torch.as_tensor(sorted(set(suppress) - {eos}), dtype=torch.long)
        self.active = torch.arange(clips)  # original index of each active clip
        # all beams start identical: only beam 0 may expand at step 0, else k copies would tie
        self.scores = torch.full((clips, k), -torch.inf)
        self.scores[:, 0] = 0.0
        self.seqs = torch.zeros((clips * k, 0), dtype=torch.long)
        self.finished: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(clips)]

    @property
    def done(self) -> bool:
        return len(self.active) == 0

    def advance(
        self, logp: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs ``[A, k, V]`` of step ``t`` -> (source rows ``[A'k]`` to reorder caches by,
        next tokens ``[A'k]``, indices ``[A']`` of the clips still active)."""
        a, k, v = logp.shape
        if len(self.suppress):
            logp[:, :, self.suppress] = -torch.inf
        if t < self.opts.min_len:
            logp[:, :, self.eos] = -torch.inf
        self._block_repeats(logp.view(a * k, v))
        self._penalize_words(logp.view(a * k, v))
        cand = (self.scores[:, :, None] + logp).view(a, k * v)
        top, idx = cand.topk(2 * k, dim=1)  # sorted: at most k are EOS, so >= k live remain
        src, tok = idx // v, idx % v
        is_eos = tok == self.eos
        rank = torch.arange(2 * k).expand(a, -1)
        for i, r in (is_eos & (rank < k)).nonzero().tolist():  # at most A*k small items
            row = i * k + int(src[i, r])
            self.finished[int(self.active[i])].append(
                (float(top[i, r]), tuple(self.seqs[row].tolist()) + (self.eos,))
            )
        # live: the first k non-EOS candidates in score order
        sel = (is_eos.long() * 2 * k + rank).argsort(dim=1)[:, :k]
        src, tok, top = src.gather(1, sel), tok.gather(1, sel), top.gather(1, sel)
        rows = (torch.arange(a)[:, None] * k + src).view(-1)
        self.seqs = torch.cat([self.seqs[rows], tok.view(-1, 1)], dim=1)
        self.scores = top
        last = t + 1 >= self.opts.max_len
        keep_mask = torch.tensor([len(self.finished[int(c)]) < k and not last for c in self.active])
        if last:  # out of length: live beams compete as they are
            for i, c in enumerate(self.active.tolist()):
                if len(self.finished[c]) < k:
                    for b in range(k):
                        self.finished[c].append(
                            (float(top[i, b]), tuple(self.seqs[i * k + b].tolist()))
                        )
        keep = keep_mask.nonzero().view(-1)
        rows = rows.view(a, k)[keep].view(-1)
        self.seqs = self.seqs.view(a, k, -1)[keep].reshape(len(keep) * k, self.seqs.shape[1])
        self.scores, self.active = self.scores[keep], self.active[keep]
        return rows, tok[keep].view(-1), keep

    def _block_repeats(self, logp: torch.Tensor) -> None:
        """Forbid, per row of ``logp [A*k, V]``, every token that would repeat an n-gram."""
        n, length = self.opts.no_repeat_ngram, self.seqs.shape[1]
        if n <= 0 or length < n:
            return
        for row, seq in enumerate(self.seqs.tolist()):  # A*k rows of <= max_len tokens: cheap
            tail = seq[length - n + 1 :]
            banned = [seq[i + n - 1] for i in range(length - n + 1) if seq[i : i + n - 1] == tail]
            if banned:
                logp[row, banned] = -torch.inf

    def _penalize_words(self, logp: torch.Tensor) -> None:
        """Take ``repeat_penalty`` off, per row of ``logp [A*k, V]`` whose last word is a content
        word it said before, every token that would end that word (one that begins a new word,
        punctuation, EOS); tokens that continue the word change it and go free. Words are
        checked whole, since a tokenizer splits them ("D" "ucks", " qu" "acking")."""
        if self.words is None or self.seqs.shape[1] == 0:
            return
        texts, ends = self.words
        for row, seq in enumerate(self.seqs.tolist()):  # A*k rows of <= max_len tokens: cheap
            text = "".join(texts[t] for t in seq)
            if not text[-1:].isalpha():
                continue
            said = letter_runs(text)
            if not said:  # letters outside a-z only
                continue
            last = said[-1]
            if is_content_word(last) and stem(last) in {stem(w) for w in said[:-1]}:
                logp[row, ends] -= self.opts.repeat_penalty

    def results(self, detokenize: Callable[[list[int]], str]) -> list[Decoded]:
        out = []
        for hyps in self.finished:
            ranked = sorted(
                ((s / self._penalty(len(toks)), s, toks) for s, toks in hyps), key=lambda x: -x[0]
            )  # stable: first of equals
            alts = []
            for score, total, toks in ranked:
                body = tuple(t for t in toks if t != self.eos)
                alts.append(Decoded(detokenize(list(body)), float(score), float(total), body))
            out.append(dataclasses.replace(alts[0], hypotheses=tuple(alts)))
        return out

    def _penalty(self, length: int) -> float:
        if self.opts.length_penalty is None:
            return float(max(length, 1))
        return ((5.0 + length) / 6.0) ** self.opts.length_penalty


def _word_ends(
    dec: GuidedDecoder, opts: DecodingOptions
) -> tuple[dict[int, str], torch.Tensor] | None:
    """(text of every token id the decoder can emit, ids of those that end the word before them:
    a space or punctuation first, and EOS), or None when ``repeat_penalty`` is off. A decoder
    with a restricted head emits only its ~5k ``vocab_ids``, so only those are decoded."""
    if opts.repeat_penalty <= 0:
        return None
    lm = dec.lm
    ids = (
        range(lm.vocab_size) if getattr(dec, "vocab_ids", None) is None else dec.vocab_ids.tolist()
    )
    texts = lm.token_texts(ids)
    ends = [i for i in ids if texts[i][:1] and not (texts[i][0].isalnum() or texts[i][0] == "'")]
    return texts, torch.as_tensor(ends + [lm.eos_id], dtype=torch.long)


def _frames_tensor(
    frames: torch.Tensor | Sequence[np.ndarray] | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if frames is None:
        return None, None
    if isinstance(frames, torch.Tensor):
        return frames.float(), None
    return pad_frames(frames)


def _check(
    decoder: GuidedDecoder, guidance: Sequence[Sequence[str]], frames: torch.Tensor | None
) -> None:
    if frames is not None and frames.shape[0] != len(guidance):
        raise AudiocapError(
            f"decode: {len(guidance)} guidance lists but {frames.shape[0]} clips of frames"
        )


def decode(
    decoder: GuidedDecoder,
    guidance: Sequence[Sequence[str]],
    frames: torch.Tensor | Sequence[np.ndarray] | None,
    opts: DecodingOptions = DecodingOptions(),
    frames_pad: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    evidence: Sequence[Evidence] | None = None,
    idf: dict[str, float] | None = None,
) -> list[Decoded]:
    """Captions of ``B`` clips from their guidance captions and frames ``[B, T, D_a]`` (or a list
    of ``[T_i, D_a]`` arrays; ``frames_pad`` ``[B, T]`` True = padding). Batched, KV-cached.
    ``evidence``: per clip, the retrieved pool (captions, weights) that ``select="consensus"``
    weighs hypotheses against (default: the guidance, equally weighted). ``idf``: the n-gram
    idf of the caption corpus (agreement.ngram_idf) for the CIDEr-D agreement; default: every
    n-gram weighs 1."""
    frames, pad = _frames_tensor(frames)
    pad = frames_pad if frames_pad is not None else pad
    _check(decoder, guidance, frames)
    out: list[Decoded] = []
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(guidance), opts.batch_size):
                e = s + opts.batch_size
                part = _decode_chunk(
                    decoder,
                    guidance[s:e],
                    None if frames is None else frames[s:e],
                    None if pad is None else pad[s:e],
                    opts,
                )
                out += _select(
                    part, guidance[s:e], None if evidence is None else evidence[s:e], opts, idf
                )
                if progress is not None:
                    progress(len(guidance[s:e]))
    finally:
        decoder.train(was_training)
    return out


def _decode_chunk(
    dec: GuidedDecoder,
    guidance: Sequence[Sequence[str]],
    frames: torch.Tensor | None,
    frames_pad: torch.Tensor | None,
    opts: DecodingOptions,
) -> list[Decoded]:
    lm, k = dec.lm, opts.beam_size
    ref, ref_pad = dec.ref_features(guidance)
    ctx: Context = dec.context(
        ref, ref_pad, frames, None if frames_pad is None else frames_pad.to(ref.device)
    )
    beams = _Beams(len(guidance), k, opts, lm.eos_id, lm.special_ids, _word_ends(dec, opts))
    # step 0: every beam of a clip is the same [bos], so run one row per clip and copy it k times
    tokens = torch.full((len(guidance), 1), lm.bos_id, dtype=torch.long)
    cache = None
    for t in range(opts.max_len):
        h, cache = lm.step(tokens, cache)  # [A*k, 1, D_l]: only the newest token is computed
        if t == 0:
            cache.batch_repeat_interleave(k)
            h = h.repeat_interleave(k, dim=0)
        logits = dec.fuse(h.view(-1, k, h.shape[-1]), ctx)  # beams as the query axis of their clip
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        rows, nxt, keep = beams.advance(logp, t)
        if beams.done:
            break
        cache.reorder_cache(rows.to(h.device))  # follow the surviving beams; drops finished clips
        if len(keep) < ctx.clips:
            ctx = ctx.select(keep.to(h.device))
        tokens = nxt.view(-1, 1)
    return beams.results(lm.detokenize)


def _select(
    decoded: list[Decoded],
    guidance: Sequence[Sequence[str]],
    evidence: Sequence[Evidence] | None,
    opts: DecodingOptions,
    idf: dict[str, float] | None = None,
) -> list[Decoded]:
    if opts.select == "score":
        return decoded
    # the pool's own caption only against a whole pool: the margin was fitted on pools of 100
    margin = opts.pool_margin if opts.select == "consensus" and evidence is not None else math.inf
    if opts.select == "guidance" or evidence is None:
        evidence = [(g, [1.0] * len(g)) for g in guidance]
    return choose(decoded, evidence, opts.recall_weight, idf, margin)


def choose(
    decoded: Sequence[Decoded],
    evidence: Sequence[Evidence],
    recall_weight: float = 0.0,
    idf: dict[str, float] | None = None,
    pool_margin: float = math.inf,
) -> list[Decoded]:
    """Each clip's caption by :func:`agreement.select_mbr` among its ``hypotheses`` (a clip
    without any: itself): the chosen hypothesis, keeping the clip's hypotheses, or the evidence
    caption printed instead, ``retrieved``, with no tokens and NaN scores."""
    hyps = [d.hypotheses or (d,) for d in decoded]
    picks = select_mbr(
        [[h.text for h in hs] for hs in hyps], evidence, recall_weight, idf, pool_margin
    )
    out = []
    for d, hs, pick in zip(decoded, hyps, picks):
        if isinstance(pick, str):
            out.append(Decoded(pick, float("nan"), float("nan"), (), d.hypotheses, retrieved=True))
        else:
            out.append(dataclasses.replace(hs[pick], hypotheses=d.hypotheses) if pick else d)
    return out


def decode_naive(
    decoder: GuidedDecoder,
    guidance: Sequence[Sequence[str]],
    frames: torch.Tensor | Sequence[np.ndarray] | None,
    opts: DecodingOptions = DecodingOptions(),
) -> list[Decoded]:
    """The same search with nothing kept between steps, one clip at a time: each step reruns the
    whole model (guidance through the frozen LM, the full prefix of every beam through the LM and
    the fusion), as a loop over a plain ``forward`` would; then the same hypothesis selection, as
    :func:`decode` makes it without ``evidence`` or ``idf``. The benchmark baseline and the
    reference the fast path is tested against."""
    frames, pad = _frames_tensor(frames)
    _check(decoder, guidance, frames)
    lm, k, out = decoder.lm, opts.beam_size, []
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.inference_mode():
            for i in range(len(guidance)):
                fr = None if frames is None else frames[i : i + 1]
                beams = _Beams(1, k, opts, lm.eos_id, lm.special_ids, _word_ends(decoder, opts))
                ids = torch.full((k, 1), lm.bos_id, dtype=torch.long)
                for t in range(opts.max_len):
                    # the whole model again, as a plain forward(guidance, prefix, frames) would
                    ref, ref_pad = decoder.ref_features([guidance[i]])
                    ctx = decoder.context(ref, ref_pad, fr, None if pad is None else pad[i : i + 1])
                    h = lm.features(ids)  # [k, t+1, D_l], the whole prefix again
                    logits = decoder.fuse(h.reshape(1, -1, h.shape[-1]), ctx).view(k, t + 1, -1)
                    logp = F.log_softmax(logits[:, -1].float(), dim=-1).cpu()[None]
                    rows, nxt, _ = beams.advance(logp, t)
                    if beams.done:
                        break
                    ids = torch.cat([ids[rows], nxt.view(-1, 1)], dim=1)
                out += beams.results(lm.detokenize)
    finally:
        decoder.train(was_training)
    return _select(out, guidance, None, opts)
