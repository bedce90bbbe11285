"""Greedy and beam search over a :class:`~audiocap_cli.decoder.GuidedDecoder`.

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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import Context, GuidedDecoder, pad_frames
from .errors import AudiocapError

SELECTS = ("score", "guidance", "consensus")
# How "consensus" / "guidance" measure a hypothesis' agreement with a caption (see DecodingOptions).
AGREEMENTS = ("ciderd", "tfidf")
_WORD = re.compile(r"[a-z]+")
# Words of 3+ letters that captions repeat without saying anything twice ("a dog barks and
# then a man speaks while a car passes"); `repeat_penalty` spares them.
FUNCTION_WORDS = frozenset(
    "and the then followed with while are was were its into from for over out off before after "
    "during through each other that this there being has have who which they them their his her "
    "him she also very more than".split()
)


def is_content_word(word: str) -> bool:
    """Whether a lower-case word counts for `repeat_penalty`: 3+ letters, not a function word."""
    return len(word) >= 3 and word not in FUNCTION_WORDS


# A clip's evidence for minimum-Bayes-risk selection: captions and their weights.
Evidence = tuple[Sequence[str], Sequence[float]]


@dataclass(frozen=True)
class DecodingOptions:
    """How captions are searched for."""

    beam_size: int = 4  # 1 = greedy
    max_len: int = 30  # generated tokens per caption, EOS included
    # None: rank finished hypotheses by mean log-prob (sum / length); a float alpha: by
    # sum / ((5 + length) / 6) ** alpha (Wu et al. 2016, GNMT).
    length_penalty: float | None = None
    min_len: int = 1  # EOS is suppressed before this many tokens (no empty captions)
    batch_size: int = 32  # clips per batched forward (x beam_size rows)
    # A hypothesis may not repeat any n-gram of this size (0 = off). Captions of a sound rarely
    # repeat a trigram, while an undertrained decoder loops ("a motor vehicle motor vehicle").
    # Token ids are compared, so "A baby cries and a baby cries" ("A" != " a") passes. Comparing
    # them case-blind was measured on the shipped decoder (AudioCaps val, consensus selection):
    # beam 4 22.0 / 66.1 -> 21.9 / 66.4 METEOR / CIDEr-D, beam 8 22.0 / 67.1 -> 21.6 / 61.3 (more
    # hypotheses end early, so good ones never finish), so it was not kept.
    no_repeat_ngram: int = 3
    # Log-prob taken off a hypothesis each time it completes a content word it already said,
    # case-blind (0 = off): "A man is speaking and a man speaks", "Ducks quacking as ducks
    # quack". Soft, so "A man speaks and a woman speaks" may still win. Content words: 3+
    # letters, not in FUNCTION_WORDS.
    repeat_penalty: float = 0.0
    # Which finished hypothesis is the caption: "score", the best by the ranking above; or a
    # minimum-Bayes-risk choice, the one that agrees most with what retrieval found:
    # "consensus" against the retrieval's whole weighted pool (`decode(evidence=...)`),
    # "guidance" against the K guidance captions only.
    select: str = "score"
    # The agreement of a hypothesis with one evidence caption: "ciderd", CIDEr-D itself (clipped
    # tf-idf 1..4-grams with the corpus idf that `decode(idf=...)` is given, Gaussian length
    # penalty; zeroshot.ciderd_agreement), so the choice is the hypothesis of highest expected
    # CIDEr-D were the references like the evidence; or "tfidf", the consensus TF-IDF cosine of
    # the evidence pool (CIDEr's n-grams, the pool's own idf, no clipping or length penalty;
    # zeroshot.consensus_scores), the default before. Measured on the shipped decoder, beam 4,
    # "consensus" (METEOR / CIDEr-D; AudioCaps val, simulated input; the 337 real clips; the 137
    # real sound events): tfidf + 0.3 F-mean 21.9 / 67.0, 12.9 / 32.8, 19.0 / 77.2; ciderd + 3
    # F-mean 21.9 / 68.5, 13.0 / 33.2, 19.4 / 78.1; on two more draws of val's simulated input,
    # 21.8 / 66.9 -> 21.8 / 68.7 and 21.8 / 66.8 -> 22.0 / 69.3 (`python
    # bench/quality/grounded_report.py --no-ablations --agreement A --recall-weight W`).
    agreement: str = "ciderd"
    # Weight of the unigram F-mean (METEOR's recall-weighted harmonic mean) beside that
    # agreement. With "ciderd", val CIDEr-D by weight: 0.5: 60.5, 1: 60.8, 1.25: 68.2, 1.5:
    # 68.4, 2: 68.5, 3: 68.5, 5: 68.1 (a plateau above 1.25, in either half of val); 3 rather
    # than 2 for METEOR: on three draws of val's input 21.9, 21.8, 22.0 against 21.8, 21.6,
    # 21.7. With "tfidf" (beam 8): 0: 20.9 / 58.8, 12.1 / 35.2; 0.3: 22.0 / 67.1, 12.3 / 33.3.
    recall_weight: float = 3.0
    # None: the caption is always one of the decoder's hypotheses. A float m, with "consensus"
    # and an evidence pool given to `decode` (else it is ignored): the evidence's own
    # most agreeing caption (its agreement with the rest of the evidence, itself left out;
    # zeroshot.ciderd_consensus) is printed instead when that agreement beats the chosen
    # hypothesis' by more than m; "ciderd" agreement only. A hypothesis that copies an evidence
    # caption also agrees with that copy, so m is roughly the self-match it is credited with
    # (1/100 of 10 + 3 with a pool of 100). See `captioner.CaptionOptions.pool_margin`.
    pool_margin: float | None = None

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise AudiocapError(f"decoding options: select {self.select!r} not one of {SELECTS}")
        if self.agreement not in AGREEMENTS:
            raise AudiocapError(
                f"decoding options: agreement {self.agreement!r} not one of {AGREEMENTS}"
            )
        if self.recall_weight < 0.0 or self.repeat_penalty < 0.0:
            raise AudiocapError("decoding options: recall_weight and repeat_penalty must be >= 0")
        if self.pool_margin is not None and self.agreement != "ciderd":
            raise AudiocapError(
                "decoding options: pool_margin needs agreement 'ciderd' (or pool_margin None)"
            )
        if self.beam_size < 1 or self.max_len < 1 or self.batch_size < 1 or self.min_len < 0:
            raise AudiocapError("decoding options: beam_size, max_len and batch_size must be >= 1")


@dataclass(frozen=True)
class Decoded:
    """One caption: its text, ranking score, summed log-prob and tokens (EOS stripped), and every
    finished hypothesis of its clip, best-ranked first (the caption is one of them unless
    ``retrieved``: a retrieved caption printed instead, see :func:`select_mbr`)."""

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
            said = _WORD.findall(text.lower())
            last = said[-1]
            if is_content_word(last) and _stem(last) in {_stem(w) for w in said[:-1]}:
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


def _stem(word: str) -> str:
    """A crude stem, enough to see "quacks" / "quack" or "revving" / "revs" as one word."""
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) >= 4 and word[-1] == word[-2] else word  # "revv" -> "rev"


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
    idf of the caption corpus (zeroshot.ngram_idf) for ``agreement="ciderd"``; default: every
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
    # the pool's own caption only against a whole pool: the margin was measured on pools of 100
    margin = opts.pool_margin if opts.select == "consensus" and evidence is not None else None
    if opts.select == "guidance" or evidence is None:
        evidence = [(g, [1.0] * len(g)) for g in guidance]
    return select_mbr(decoded, evidence, opts.recall_weight, opts.agreement, idf, margin)


# METEOR 1.5's English alpha (pycocoevalcap runs it with `-l en`): F-mean = P R / (a P + (1 - a) R).
METEOR_ALPHA = 0.85


def _word_counts(texts: Sequence[Sequence[str]], vocab: dict[str, int]) -> np.ndarray:
    """``[N, V]`` word counts over ``vocab`` (grown with the new words)."""
    ids = [[vocab.setdefault(w, len(vocab)) for w in t] for t in texts]
    out = np.zeros((len(texts), len(vocab)))
    for i, row in enumerate(ids):
        np.add.at(out[i], row, 1.0)
    return out


def unigram_fmean(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> np.ndarray:
    """METEOR's F-mean of exact unigram matches (clipped counts) of each of ``hyps`` with each
    of ``refs`` (lists of words): ``[H, R]``, 0 where nothing matches."""
    vocab: dict[str, int] = {}
    r = _word_counts(refs, vocab)
    h = _word_counts(hyps, vocab)
    m = np.minimum(h[:, None, : r.shape[1]], r[None, :, :]).sum(
        -1
    )  # [H, R]; words no ref has match nothing
    with np.errstate(divide="ignore", invalid="ignore"):
        p = m / h.sum(1, keepdims=True)
        rc = m / r.sum(1)[None, :]
        f = p * rc / (METEOR_ALPHA * p + (1.0 - METEOR_ALPHA) * rc)
    return np.where(m > 0, f, 0.0)


def select_mbr(
    decoded: Sequence[Decoded],
    evidence: Sequence[Evidence],
    recall_weight: float = 0.0,
    agreement: str = "ciderd",
    idf: dict[str, float] | None = None,
    pool_margin: float | None = None,
) -> list[Decoded]:
    """Minimum-Bayes-risk choice: each clip's hypothesis with the highest agreement with its
    evidence captions, weighted: the mean ``agreement`` ("ciderd": CIDEr-D with the corpus
    ``idf``, without one every n-gram weighing 1; "tfidf": the consensus TF-IDF cosine) plus
    ``recall_weight`` x the mean unigram F-mean (METEOR-like). Ties: the better-ranked one.
    Clips without evidence, or (``pool_margin`` None) with a single hypothesis, keep their
    best-ranked one. ``pool_margin`` (DecodingOptions.pool_margin): the evidence caption of
    highest leave-one-out agreement replaces the chosen hypothesis when it beats it by more than
    that; it comes back ``retrieved``, with no tokens and NaN scores, and the clip's hypotheses."""
    from .zeroshot import ciderd_agreement, ciderd_consensus, consensus_scores, words

    if agreement not in AGREEMENTS:
        raise AudiocapError(f"agreement {agreement!r} not one of {AGREEMENTS}")
    if pool_margin is not None and agreement != "ciderd":
        raise AudiocapError("pool_margin needs agreement 'ciderd'")
    if agreement == "tfidf":
        groups = [
            [h.text for h in d.hypotheses] + list(caps) for d, (caps, _) in zip(decoded, evidence)
        ]
        weights = [
            [0.0] * len(d.hypotheses) + [float(x) for x in w]
            for d, (_, w) in zip(decoded, evidence)
        ]
        scores = [
            s[: len(d.hypotheses)] for d, s in zip(decoded, consensus_scores(groups, weights))
        ]
    out = []
    for c, (d, (caps, w)) in enumerate(zip(decoded, evidence)):
        hyps = d.hypotheses or (d,)
        if not len(caps) or not sum(w) or (len(hyps) < 2 and pool_margin is None):
            out.append(d)
            continue
        texts = [h.text for h in hyps]
        utility = scores[c] if agreement == "tfidf" else ciderd_agreement(texts, caps, w, idf)
        if recall_weight:
            f = unigram_fmean([words(t) for t in texts], [words(x) for x in caps])  # [n, R]
            utility = utility + recall_weight * np.average(f, axis=1, weights=w)
        best = int(np.argmax(utility))  # first of equals
        if pool_margin is not None:
            own = np.where(
                np.asarray(w, dtype=np.float64) > 0,
                ciderd_consensus([list(caps)], [list(w)], idf, recall_weight)[0],
                -np.inf,
            )
            j = int(np.argmax(own))
            if own[j] > utility[best] + pool_margin:
                out.append(
                    Decoded(caps[j], float("nan"), float("nan"), (), d.hypotheses, retrieved=True)
                )
                continue
        out.append(dataclasses.replace(hyps[best], hypotheses=d.hypotheses) if best else d)
    return out


def decode_naive(
    decoder: GuidedDecoder,
    guidance: Sequence[Sequence[str]],
    frames: torch.Tensor | Sequence[np.ndarray] | None,
    opts: DecodingOptions = DecodingOptions(),
) -> list[Decoded]:
    """The same search with nothing kept between steps, one clip at a time: each step reruns the
    whole model (guidance through the frozen LM, the full prefix of every beam through the LM and
    the fusion), as a loop over a plain ``forward`` would. The benchmark baseline and the
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
    return out
