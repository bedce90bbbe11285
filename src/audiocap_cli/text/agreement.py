"""Agreement between caption texts: the words of a caption, CIDEr-D, METEOR's unigram F-mean,
the consensus TF-IDF cosine, and the minimum-Bayes-risk choice among hypotheses built on them.

``caption`` picks its printed hypothesis by :func:`select_mbr`: each hypothesis' expected CIDEr-D
(:func:`ciderd_agreement`, the index's corpus idf) plus ``recall_weight`` x its unigram F-mean
(:func:`unigram_fmean`) against the retrieved pool, and, for a label-space pool, the pool's own
most agreeing caption (:func:`ciderd_consensus`) when it beats that hypothesis by a margin.
Retrieval re-ranks a pool by the consensus TF-IDF cosine (:func:`consensus_rerank`).

Every text is cut into words by one tokenizer, :func:`words`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

# ---------------------------------------------------------------- words

_WORD = re.compile(r"[a-z0-9']+")
# digits and apostrophes to spaces: what cuts words() into the repeat penalty's letter runs
_NOT_LETTER = str.maketrans("0123456789'", " " * 11)


def words(text: str) -> list[str]:
    """Lower-case words of a caption (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


def letter_runs(text: str) -> list[str]:
    """:func:`words` cut at digits and apostrophes ("a man's dog" -> a, man, s, dog): the words
    ``DecodingOptions.repeat_penalty`` checks, as it always has (cutting them otherwise would
    change which beams it penalises)."""
    return [p for w in words(text) for p in w.translate(_NOT_LETTER).split()]


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


def stem(word: str) -> str:
    """A crude stem, enough to see "quacks" / "quack" or "revving" / "revs" as one word."""
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if len(word) >= 4 and word[-1] == word[-2] else word  # "revv" -> "rev"


# ---------------------------------------------------------------- n-grams and idf

# n-gram orders of CIDEr (Vedantam et al. 2015) and of the consensus TF-IDF
MAX_NGRAM = 4


def _ngrams(text: str) -> list[str]:
    w = words(text)
    return [
        f"{n}\x00" + " ".join(w[i : i + n])
        for n in range(1, MAX_NGRAM + 1)
        for i in range(len(w) - n + 1)
    ]


def ngram_idf(corpus: Sequence[str]) -> dict[str, float]:
    """Corpus document frequencies as idf, log(N / df), keyed like :func:`_ngrams` (CIDEr's idf),
    each caption a document."""
    return reference_idf([[text] for text in corpus])


def reference_idf(sets: Sequence[Sequence[str]]) -> dict[str, float]:
    """CIDEr's idf, log(N / df), with a document per reference set (a clip's captions), as
    pycocoevalcap computes it over a test set's references; keyed like :func:`_ngrams`."""
    df: Counter[str] = Counter()
    for refs in sets:
        df.update(
            {g for text in refs for g in _ngrams(text)}
        )  # Counter counts in C: 0.9 s for 50k captions
    n = max(len(sets), 1)
    return {g: math.log(n / d) for g, d in df.items()}


# ---------------------------------------------------------------- consensus TF-IDF cosine


def consensus_scores(
    candidates: Sequence[Sequence[str]],
    weights: Sequence[Sequence[float]] | None = None,
    idf: dict[str, float] | None = None,
) -> list[np.ndarray]:
    """Per group, each candidate's mean TF-IDF cosine to the other candidates of its group.

    A candidate is a bag of 1..4-grams; tf = count, idf = log((n + 1) / (df + 1)) + 1 over the
    group's n candidates (smoothed, so an n-gram shared by all keeps weight 1: shared n-grams
    are exactly the consensus we look for); each n-gram order is L2-normalised on its own and
    the cosine averaged over the orders, as in CIDEr. ``weights`` (e.g. corpus counts) weight
    the other candidates in the mean. Fully vectorised over all groups.
    """
    sizes = np.array([len(c) for c in candidates], dtype=np.int64)
    flat = [t for group in candidates for t in group]
    m = len(flat)
    if m == 0:
        return [np.zeros(0) for _ in candidates]
    group = np.repeat(np.arange(len(candidates)), sizes)  # [M]
    w_row = (
        np.concatenate([np.asarray(w, dtype=np.float64) for w in weights])
        if weights is not None
        else np.ones(m)
    )
    # n-grams of each distinct text once; a pool repeats texts across clips
    uniq, inv_text = np.unique(np.array(flat, dtype=object), return_inverse=True)
    vocab: dict[str, int] = {}
    u_rows, u_cols = [], []
    for ui, text in enumerate(uniq):
        grams = _ngrams(text)
        u_rows.extend([ui] * len(grams))
        u_cols.extend(vocab.setdefault(g, len(vocab)) for g in grams)
    order_of = np.fromiter(
        (int(g.split("\x00", 1)[0]) for g in vocab), dtype=np.int64, count=len(vocab)
    )
    u_rows_a = np.asarray(u_rows, dtype=np.int64)
    u_cols_a = np.asarray(u_cols, dtype=np.int64)
    # entries (row, gram, count) for every candidate row: expand unique texts to rows
    u_start = np.searchsorted(u_rows_a, np.arange(len(uniq) + 1))
    u_len = np.diff(u_start)
    row_len = u_len[inv_text]
    rows = np.repeat(np.arange(m), row_len)
    offs = np.arange(rows.size) - np.repeat(np.cumsum(row_len) - row_len, row_len)
    cols = u_cols_a[np.repeat(u_start[:-1][inv_text], row_len) + offs]
    v = len(vocab)
    key, cnt = np.unique(rows * v + cols, return_counts=True)  # (row, gram) -> count
    rows, cols = key // v, key % v
    g = group[rows]
    gv_key, gv_inv = np.unique(g * v + cols, return_inverse=True)
    df = np.bincount(gv_inv, minlength=gv_key.size)  # candidates of the group holding the gram
    if idf is None:
        n_g = sizes[g]
        x = cnt * (np.log((n_g + 1.0) / (df[gv_inv] + 1.0)) + 1.0)
    else:  # corpus idf; an n-gram the corpus never saw is as rare as can be
        unseen = max(idf.values(), default=0.0)
        idf_v = np.fromiter((idf.get(t, unseen) for t in vocab), dtype=np.float64, count=v)
        x = cnt * idf_v[cols]
    ro = rows * MAX_NGRAM + order_of[cols] - 1
    norm = np.sqrt(np.bincount(ro, weights=x * x, minlength=m * MAX_NGRAM))
    x = x / norm[ro]
    gsum = np.bincount(gv_inv, weights=x * w_row[rows], minlength=gv_key.size)  # sum_j w_j x_j
    dot_all = np.bincount(rows, weights=x * gsum[gv_inv], minlength=m)
    self_dot = np.bincount(rows, weights=x * x, minlength=m) * w_row
    w_others = np.bincount(group, weights=w_row, minlength=len(candidates))[group] - w_row
    score = (dot_all - self_dot) / np.maximum(w_others, 1e-12) / MAX_NGRAM
    return np.split(score, np.cumsum(sizes)[:-1])


def consensus_rerank(
    candidates: Sequence[Sequence[str]],
    top: int = 1,
    weights: Sequence[Sequence[float]] | None = None,
    idf: dict[str, float] | None = None,
) -> list[list[str]]:
    """Per group, the ``top`` candidates most similar to the rest of their group, best first.

    ``candidates``: per query, retrieved captions in retrieval order (ties keep that order).
    """
    out = []
    for group, score in zip(candidates, consensus_scores(candidates, weights, idf)):
        order = np.argsort(-score, kind="stable")[:top]
        out.append([group[i] for i in order])
    return out


# ---------------------------------------------------------------- CIDEr-D

# CIDEr-D as pycocoevalcap's cider_scorer.py: a Gaussian length penalty of sigma 6 (in its
# lengths, bigram counts), and the mean cosine over 1..4-grams times 10.
CIDER_D_SIGMA = 6.0

CIDER_D_SCALE = 10.0


def ciderd_matrix(
    hyps: Sequence[str],
    refs: Sequence[str],
    idf: dict[str, float] | None,
    unseen: float | None = None,
) -> np.ndarray:
    """``[H, R]``: each of ``hyps``' CIDEr-D against each of ``refs`` taken alone.

    CIDEr-D as pycocoevalcap 1.2 computes it for one reference: tf-idf vectors of 1..4-grams
    (``idf``: :func:`ngram_idf` or :func:`reference_idf` of a caption corpus, an n-gram it lacks
    getting ``unseen``, by default the largest idf, log N where some n-gram is in one document
    only; None: every n-gram weighs 1), the hypothesis' weights clipped at the reference's, the
    cosine of each order averaged, times a Gaussian penalty on the length difference, times 10.
    Words are :func:`words`. Exact, in sparse products: with counts c and weights x = c idf,
    the clipped dot sum_g min(x_h, x_r) x_r = sum_k sum_g [c_h >= k] idf [c_r >= k] x_r, one
    product per count level k (captions rarely repeat an n-gram more than twice).
    """
    if not len(hyps) or not len(refs):
        return np.zeros((len(hyps), len(refs)))
    from scipy import sparse

    if unseen is None:
        unseen = max(idf.values(), default=0.0) if idf is not None else 1.0
    idf = idf if idf is not None else {}
    texts = list(dict.fromkeys([*hyps, *refs]))
    at = {t: i for i, t in enumerate(texts)}
    vocab: dict[str, int] = {}
    rows, cols, cnts = [], [], []
    lengths = np.zeros(len(texts))
    for i, t in enumerate(texts):
        for g, c in Counter(_ngrams(t)).items():
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
            cnts.append(c)
        lengths[i] = max(len(words(t)) - 1, 0)  # pycocoevalcap's length: the bigram count
    row_a, col_a, cnt_a = (
        np.array(rows, np.int64),
        np.array(cols, np.int64),
        np.array(cnts, np.float64),
    )
    order = np.fromiter(
        (int(g.split("\x00", 1)[0]) - 1 for g in vocab), dtype=np.int64, count=len(vocab)
    )[col_a]
    x = (
        cnt_a
        * np.fromiter((idf.get(g, unseen) for g in vocab), dtype=np.float64, count=len(vocab))[
            col_a
        ]
    )
    h_rows = np.array([at[h] for h in hyps])
    r_rows = np.array([at[r] for r in refs])
    shape = (len(texts), len(vocab))
    cos = np.zeros((len(hyps), len(refs)))
    for n in range(MAX_NGRAM):
        on = order == n
        norm = np.sqrt(np.bincount(row_a[on], weights=x[on] ** 2, minlength=len(texts)))
        dot = np.zeros_like(cos)
        for k in range(1, int(cnt_a[on].max(initial=0)) + 1):
            e = on & (cnt_a >= k)
            a = sparse.csr_matrix(
                (x[e] / cnt_a[e], (row_a[e], col_a[e])), shape=shape
            )  # [c_h >= k] idf
            b = sparse.csr_matrix((x[e], (row_a[e], col_a[e])), shape=shape)  # [c_r >= k] x_r
            dot += (a[h_rows] @ b[r_rows].T).toarray()
        denom = norm[h_rows][:, None] * norm[r_rows][None, :]
        cos += np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    delta = lengths[h_rows][:, None] - lengths[r_rows][None, :]
    return CIDER_D_SCALE * cos / MAX_NGRAM * np.exp(-(delta**2) / (2.0 * CIDER_D_SIGMA**2))


def ciderd_agreement(
    hyps: Sequence[str],
    refs: Sequence[str],
    weights: Sequence[float],
    idf: dict[str, float] | None,
    unseen: float | None = None,
) -> np.ndarray:
    """``[H]``: each of ``hyps``' CIDEr-D (:func:`ciderd_matrix`) against each of ``refs`` taken
    alone, averaged with ``weights``; a hypothesis' expected CIDEr-D if the references were
    drawn from ``refs``."""
    w = np.asarray(weights, dtype=np.float64)
    if not len(hyps) or not len(refs) or w.sum() <= 0:
        return np.zeros(len(hyps))
    keep = w > 0
    refs = [r for r, k in zip(refs, keep) if k]
    return ciderd_matrix(hyps, refs, idf, unseen) @ w[keep] / w[keep].sum()


def ciderd_consensus(
    candidates: Sequence[Sequence[str]],
    weights: Sequence[Sequence[float]] | None = None,
    idf: dict[str, float] | None = None,
    recall_weight: float = 0.0,
) -> list[np.ndarray]:
    """Per group, each candidate's expected CIDEr-D (:func:`ciderd_matrix`, corpus ``idf``)
    against the other candidates of its group, plus ``recall_weight`` x its mean unigram
    F-mean with them (METEOR's, :func:`unigram_fmean`); means weighted by ``weights``.

    The MBR agreement of ``caption``'s hypothesis selection, applied within a retrieved pool:
    the captions a pool's other captions would score best, as references.
    """
    out = []
    for c, group in enumerate(candidates):
        if not len(group):
            out.append(np.zeros(0))
            continue
        w = np.ones(len(group)) if weights is None else np.asarray(weights[c], dtype=np.float64)
        uniq = list(dict.fromkeys(group))
        pos = {t: i for i, t in enumerate(uniq)}
        at = np.array([pos[t] for t in group])
        w_u = np.bincount(
            at, weights=w, minlength=len(uniq)
        )  # a repeated text counts once per copy
        toks = [words(t) for t in uniq]
        agree = ciderd_matrix(uniq, uniq, idf)
        if recall_weight:
            agree = agree + recall_weight * unigram_fmean(toks, toks)
        total = agree @ w_u  # [U]: against every copy, itself included
        others = w.sum() - w
        own = w * np.diag(agree)[at]  # leave the candidate itself out (its other copies stay)
        out.append(np.divide(total[at] - own, others, out=np.zeros(len(group)), where=others > 0))
    return out


# ---------------------------------------------------------------- METEOR's unigram F-mean

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


# ---------------------------------------------------------------- minimum-Bayes-risk choice

# A clip's evidence for minimum-Bayes-risk selection: captions and their weights.
Evidence = tuple[Sequence[str], Sequence[float]]


def select_mbr(
    hypotheses: Sequence[Sequence[str]],
    evidence: Sequence[Evidence],
    recall_weight: float = 0.0,
    idf: dict[str, float] | None = None,
    pool_margin: float = math.inf,
) -> list[int | str]:
    """Minimum-Bayes-risk choice among each clip's ``hypotheses`` (texts, best-ranked first):
    the one with the highest agreement with the clip's evidence captions, weighted: the mean
    CIDEr-D (:func:`ciderd_agreement`, corpus ``idf``; without one every n-gram weighs 1) plus
    ``recall_weight`` x the mean unigram F-mean (METEOR-like). Ties: the better-ranked one.
    Clips without evidence, or (``pool_margin`` infinite) with a single hypothesis, keep their
    best-ranked one. ``pool_margin`` (DecodingOptions.pool_margin): the evidence caption of
    highest leave-one-out agreement (:func:`ciderd_consensus`) replaces the chosen hypothesis
    when it beats it by more than that; ``math.inf``: never.

    Per clip: the index of the chosen hypothesis, or the evidence caption printed instead."""
    pool = math.isfinite(pool_margin)
    out: list[int | str] = []
    for texts, (caps, w) in zip(hypotheses, evidence):
        if not len(caps) or not sum(w) or (len(texts) < 2 and not pool):
            out.append(0)
            continue
        texts = list(texts)
        utility = ciderd_agreement(texts, caps, w, idf)
        if recall_weight:
            f = unigram_fmean([words(t) for t in texts], [words(x) for x in caps])  # [n, R]
            utility = utility + recall_weight * np.average(f, axis=1, weights=w)
        best = int(np.argmax(utility))  # first of equals
        if pool:
            own = np.where(
                np.asarray(w, dtype=np.float64) > 0,
                ciderd_consensus([list(caps)], [list(w)], idf, recall_weight)[0],
                -np.inf,
            )
            j = int(np.argmax(own))
            if own[j] > utility[best] + pool_margin:
                out.append(caps[j])
                continue
        out.append(best)
    return out
