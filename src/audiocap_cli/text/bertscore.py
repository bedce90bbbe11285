"""BERTScore between captions: exact values, equal to the ``bert_score`` package, fast.

* ``pairwise_bertscore`` -- F1 of aligned (candidate, reference) pairs, equal to what
  ``bert_score.score(..., idf=cfg.idf, rescale_with_baseline=False)`` returns for the same model
  and layer (each caption embedded once, greedy matching batched);
* ``top_bertscore`` / ``multi_ref_bertscore`` -- cross-set top-k and max-over-references scores
  for the evaluation oracles and the BERTScore metric column.

The building blocks (``prepare``, ``greedy_f1`` for sparse pairs, ``dense_f1`` for blocks)
also serve the all-pairs "similar" labels of :mod:`similarity`. The engine reads only
``cfg.model``, ``cfg.num_layers`` and ``cfg.idf`` (:class:`ScorerSettings`); a
``similarity.SimilarityConfig`` passes as one.

BERTScore definition replicated (bert_score 0.3.13, ``utils.greedy_cos_idf``): each caption is
``tokenizer.encode(caption.strip(), add_special_tokens=True, truncation=True)`` (RoBERTa/GPT-2
tokenisers with ``add_prefix_space``), embedded by the model cut to ``num_layers`` layers, every
token vector L2-normalised. Special tokens ([CLS]/[SEP], <s>/</s>) keep their vectors in the
cosine matrix but get weight 0; the other tokens weight 1 (or idf). P = weighted mean over
candidate tokens of the best cosine to any reference token, R likewise, F = 2PR/(P+R); a
caption with no weighted token scores 0.

One detail: bert_score zeroes the cosine matrix at padding positions (``sim * masks``) and then
takes maxima *including* those zeros, so a token whose best real cosine is negative scores 0
whenever the other caption was padded in bert_score's batch (all but the longest of each
batch of 64). We clamp every token maximum at 0, which reproduces bert_score for padded
captions and makes the value independent of batching. With MiniLM 0.12% of (token, caption)
maxima on AudioCaps are negative, so bert_score can differ from us (by being lower) on the
rare pair whose caption was the longest of its batch; it also makes F1 >= 0, so a global
minimum of exactly 0 (found on AudioCaps) is the true minimum.

Parity: bert_score 0.3.13 F1 reproduced to <= 3e-7 (float32) on the tiny test model and on
MiniLM; the bert_score package itself fails on empty captions under transformers 5 (we score
them 0 as its code intends).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from .. import resources
from ..errors import ModelNotFoundError

Progress = Callable[[int], None]


# bert_score.utils.model2layers for the models a user is likely to name (its tuned layer for
# WMT16 correlation); used when ``num_layers`` is None. roberta-large/17 is the paper's setting.
DEFAULT_LAYERS: dict[str, int] = {
    "roberta-large": 17,
    "roberta-base": 10,
    "bert-base-uncased": 9,
    "bert-large-uncased": 18,
    "distilbert-base-uncased": 5,
    "distilroberta-base": 5,
    "microsoft/deberta-xlarge-mnli": 40,
    "microsoft/deberta-large-mnli": 18,
}

# Token budget of one embedding forward batch (batch rows x padded length). 8192 tokens keep
# the attention activations of a 6-layer 384-d model around 50 MB and the GEMMs large enough
# to run near peak on a laptop CPU.
EMBED_TOKENS_PER_BATCH = 8192

# Sparse greedy matching gathers [pairs, L, D] token blocks; 2**21 floats (8 MB) of gathered
# vectors per block (~230 AudioCaps pairs) stays cache-resident -- memory bandwidth, not
# FLOPs, limits this step on a shared CPU -- while amortising Python overhead per block.
MATCH_FLOATS_PER_BLOCK = 1 << 21


class ScorerSettings(Protocol):
    """What the engine reads from a config (``similarity.SimilarityConfig`` is one)."""

    @property
    def model(self) -> str: ...
    @property
    def num_layers(self) -> int | None: ...
    @property
    def idf(self) -> bool: ...


@dataclass(frozen=True)
class BertScoreConfig:
    """The engine's settings alone. model: ``"minilm"`` (shipped all-MiniLM-L6-v2, offline
    default), a local HF folder, or a hub id such as ``"roberta-large"``; num_layers: layer whose
    output is used (None: bert_score's default for the model); idf: bert_score's idf weighting."""

    model: str = "minilm"
    num_layers: int | None = 6
    idf: bool = False


# --------------------------------------------------------------------------- backbone + embedding


@dataclass
class _Backbone:
    tokenizer: object
    model: torch.nn.Module
    name: str
    num_layers: int
    use_hidden_states: bool  # the model could not be cut: take hidden_states[num_layers]
    prefix_space: bool  # RoBERTa/GPT-2 BPE: bert_score encodes with add_prefix_space=True


def _resolve_model(model: str) -> str:
    if model == "minilm":
        return str(resources.shipped("minilm"))
    return model


def _default_layers(name: str, n_hidden: int) -> int:
    if name in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[name]
    try:  # bert_score's full table; importing it costs ~3 s (matplotlib), so only here
        from bert_score.utils import model2layers

        return int(model2layers.get(name, n_hidden))
    except Exception:  # bert_score absent or broken: use the top layer
        return n_hidden


def _cut_layers(model: torch.nn.Module, n: int) -> bool:
    """Drop the layers above ``n`` in place as bert_score.utils.get_model does; False if the
    architecture is not one it knows (then the caller reads hidden_states[n])."""
    for owner_name, attr in (
        ("encoder", "layer"),
        ("transformer", "layer"),
        ("", "layers"),
        ("", "layer"),
    ):
        owner = getattr(model, owner_name) if owner_name else model
        if owner is None or not hasattr(owner, attr):
            continue
        layers = getattr(owner, attr)
        if not isinstance(layers, torch.nn.ModuleList):
            continue
        if not 0 <= n <= len(layers):
            raise ModelNotFoundError(f"num_layers={n} is outside 0..{len(layers)} for this model")
        setattr(owner, attr, torch.nn.ModuleList(list(layers)[:n]))
        return True
    return False


@functools.lru_cache(maxsize=2)
def _backbone(model: str, num_layers: int | None) -> _Backbone:
    """Tokenizer + model cut to ``num_layers`` (cached per process: loading costs ~1 s)."""
    from transformers import AutoModel, AutoTokenizer, GPT2Tokenizer, RobertaTokenizer
    from transformers.utils import logging as hf_logging

    source = _resolve_model(model)
    # the library prints nothing: silence load reports/bars, then restore the caller's settings
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        net = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"BERTScore model {model!r} not found locally and could not be downloaded "
            f"(use the shipped 'minilm' or a local folder): {str(e).splitlines()[0]}"
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    net.eval()
    if hasattr(net, "decoder") and hasattr(net, "encoder"):  # BART/T5: bert_score uses the encoder
        net = net.encoder
    n_hidden = int(
        getattr(net.config, "num_hidden_layers", 0) or getattr(net.config, "n_layers", 0)
    )
    layers = num_layers if num_layers is not None else _default_layers(model, n_hidden)
    cut = _cut_layers(net, layers)
    prefix = isinstance(tokenizer, (GPT2Tokenizer, RobertaTokenizer))
    return _Backbone(tokenizer, net, model, layers, not cut, prefix)


def _encode(bb: _Backbone, text: str) -> list[int]:
    """Token ids exactly as bert_score.utils.sent_encode makes them (transformers >= 4)."""
    tok = bb.tokenizer
    text = text.strip()
    if not text:  # bert_score: build_inputs_with_special_tokens([]) (gone in transformers 5)
        build = getattr(tok, "build_inputs_with_special_tokens", None)
        if build is not None:
            return list(build([]))
        return list(tok.encode("", add_special_tokens=True))  # type: ignore[attr-defined]
    limit = int(min(tok.model_max_length, 1 << 20))  # type: ignore[attr-defined]
    if limit >= 1 << 20:  # tokenizer without a limit (bert_score would fail): the model's own
        limit = int(getattr(bb.model.config, "max_position_embeddings", 512))
    kwargs: dict[str, object] = dict(add_special_tokens=True, max_length=limit, truncation=True)
    if bb.prefix_space:
        kwargs["add_prefix_space"] = True
    return list(tok.encode(text, **kwargs))  # type: ignore[attr-defined]


@dataclass
class Embedded:
    """Unique captions embedded once. T = total tokens; the extra last row is a zero pad.

    tokens [T+1, D] L2-normalised token vectors; offsets [N+1]; lengths [N]; ids [T];
    weights [T+1] per-caption normalised token weights (special tokens 0, pad 0);
    pooled [N, D] = sum_t weights_t * tokens_t (the vector behind the F1 lower bound).
    """

    tokens: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    pooled: torch.Tensor

    @property
    def pad(self) -> int:
        return int(self.tokens.shape[0] - 1)

    def reweight(
        self, idf: dict[int, float] | None, special: tuple[int, ...], default: float
    ) -> None:
        """Set ``weights``/``pooled`` for an idf table (None: 1 for all but ``special``)."""
        ids = self.ids.numpy()
        if idf is None:
            raw = np.ones(len(ids), dtype=np.float64)
            raw[np.isin(ids, np.array(special, dtype=np.int64))] = 0.0
        else:
            uniq, inv = np.unique(ids, return_inverse=True)
            raw = np.array([idf.get(int(u), default) for u in uniq], dtype=np.float64)[inv]
        seg = np.repeat(np.arange(len(self.lengths)), self.lengths.numpy())
        sums = np.bincount(seg, weights=raw, minlength=len(self.lengths))
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(sums[seg] > 0, raw / sums[seg], 0.0)
        self.weights = torch.from_numpy(np.append(w, 0.0).astype(np.float32))
        pooled = torch.zeros(len(self.lengths), self.tokens.shape[1])
        pooled.index_add_(0, torch.from_numpy(seg), self.tokens[:-1] * self.weights[:-1, None])
        self.pooled = pooled

    @property
    def empty(self) -> torch.Tensor:
        """[N] bool: captions with no weighted token (bert_score scores them 0)."""
        return (
            self.pooled.new_zeros(len(self.lengths), dtype=torch.bool)
            .index_put_(
                (torch.from_numpy(np.repeat(np.arange(len(self.lengths)), self.lengths.numpy())),),
                self.weights[:-1] > 0,
                accumulate=True,
            )
            .logical_not()
        )


def _idf_table(token_lists: Sequence[Sequence[int]]) -> tuple[dict[int, float], float]:
    """bert_score.utils.get_idf_dict: idf = log((M+1)/(df+1)), unseen tokens log(M+1)."""
    m = len(token_lists)
    df = Counter(t for ids in token_lists for t in set(ids))
    return {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}, math.log(m + 1)


def _embed(
    bb: _Backbone, token_lists: list[list[int]], progress: Progress | None = None
) -> Embedded:
    """Embed every caption once: length-sorted batches of ~EMBED_TOKENS_PER_BATCH tokens."""
    n = len(token_lists)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dim = int(bb.model.config.hidden_size)
    tokens = torch.zeros(int(offsets[-1]) + 1, dim)
    pad_id = bb.tokenizer.pad_token_id  # type: ignore[attr-defined]
    pad_id = 0 if pad_id is None else int(pad_id)
    order = np.argsort(-lengths, kind="stable")  # longest first: the first batch sizes memory
    start = 0
    with torch.inference_mode():
        while start < n:
            longest = int(lengths[order[start]])
            stop = min(n, start + max(1, EMBED_TOKENS_PER_BATCH // max(longest, 1)))
            rows = order[start:stop]
            ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : lengths[i]] = torch.tensor(token_lists[i])
                mask[r, : lengths[i]] = 1
            out = bb.model(ids, attention_mask=mask, output_hidden_states=bb.use_hidden_states)
            hidden = out.hidden_states[bb.num_layers] if bb.use_hidden_states else out[0]
            hidden = hidden.float()
            hidden = hidden / hidden.norm(dim=-1, keepdim=True)
            flat = mask.bool()
            dest = torch.from_numpy(
                np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
            )
            tokens[dest] = hidden[flat]
            if progress is not None:
                progress(len(rows))
            start = stop
    all_ids = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.long)
    emb = Embedded(
        tokens,
        torch.from_numpy(offsets),
        torch.from_numpy(lengths),
        all_ids,
        torch.zeros(0),
        torch.zeros(0),
    )
    return emb


def _special_ids(bb: _Backbone) -> tuple[int, ...]:
    tok = bb.tokenizer
    return tuple(int(t) for t in (tok.sep_token_id, tok.cls_token_id) if t is not None)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- greedy matching


def greedy_f1(emb: Embedded, a: torch.Tensor, b: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Exact BERTScore F1 of caption pairs (a[m], b[m]) -> [M] float32.

    F1 is symmetric, so pairs are oriented short-first and sorted by (len_a, len_b); blocks of
    ~MATCH_FLOATS_PER_BLOCK cosines then need almost no padding. Pad positions gather the zero
    row, whose cosine 0 is what bert_score's ``sim * masks`` leaves there (see module doc).
    """
    m = int(a.numel())
    out = torch.zeros(m)
    if m == 0:
        return out
    la, lb = emb.lengths[a], emb.lengths[b]
    swap = la > lb
    a, b = torch.where(swap, b, a), torch.where(swap, a, b)
    la, lb = torch.minimum(la, lb), torch.maximum(la, lb)
    key = la * 4096 + lb
    order = torch.argsort(key)
    a, b, la, lb = a[order], b[order], la[order].numpy(), lb[order].numpy()
    ar = torch.arange(int(lb.max()))
    dim = int(emb.tokens.shape[1])
    res = torch.empty(m)
    pos = 0
    while pos < m:
        step = max(1, MATCH_FLOATS_PER_BLOCK // (int(la[pos] + lb[pos]) * dim))
        stop = min(m, pos + step)
        # lengths rise within the block: shrink it until the padded block fits the budget
        while (
            stop - pos > 1
            and (stop - pos) * int(la[stop - 1] + lb[pos:stop].max()) * dim
            > 2 * MATCH_FLOATS_PER_BLOCK
        ):
            stop = pos + (stop - pos) // 2
        A, B = int(la[stop - 1]), int(lb[pos:stop].max())
        ia = emb.offsets[a[pos:stop], None] + ar[None, :A]
        ia = torch.where(ar[None, :A] < emb.lengths[a[pos:stop], None], ia, emb.pad)
        ib = emb.offsets[b[pos:stop], None] + ar[None, :B]
        ib = torch.where(ar[None, :B] < emb.lengths[b[pos:stop], None], ib, emb.pad)
        # index_select on the flat table is ~2.5x faster than advanced indexing [B, L] here
        xa = emb.tokens.index_select(0, ia.reshape(-1)).view(ia.shape[0], A, dim)
        xb = emb.tokens.index_select(0, ib.reshape(-1)).view(ib.shape[0], B, dim)
        sim = torch.bmm(xa, xb.transpose(1, 2))
        if not clamp:  # true maxima over real tokens (bert_score's value for an unpadded caption)
            sim.masked_fill_((ia == emb.pad)[:, :, None] | (ib == emb.pad)[:, None, :], -2.0)
        p = (sim.amax(2).clamp_min_(0 if clamp else -2) * emb.weights[ia]).sum(1)
        r = (sim.amax(1).clamp_min_(0 if clamp else -2) * emb.weights[ib]).sum(1)
        f = 2 * p * r / (p + r)
        res[pos:stop] = torch.nan_to_num(f, nan=0.0)
        pos = stop
    out[order] = res
    return out


# Length buckets for dense blocks: captions are padded (with the zero row, weight 0) up to
# the bucket's upper edge. Exact up to 24 tokens (95% of AudioCaps captions, mean 11.8) so
# padding waste stays under ~10%; coarser above where captions are rare.
_BUCKET_EDGES = tuple(range(1, 25)) + (28, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 1024)

# Floats in one [m, Lr, Lc, n] cosine tile of the dense kernel: 2**20 (4 MB) stays in cache,
# which matters more than GEMM size on a memory-starved shared CPU (measured 0.6 GB/s there).
DENSE_TILE_FLOATS = 1 << 20


def _bucket_of(lengths: np.ndarray) -> np.ndarray:
    edges = np.array(_BUCKET_EDGES)
    return edges[np.searchsorted(edges, lengths)]


@dataclass
class _Grouped:
    """A caption subset grouped by padded length: for each bucket L, positions into the subset
    ``where`` [n], tokens [n, L, D] and weights [n, L] (pads 0)."""

    groups: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


def _group(emb: Embedded, idx: torch.Tensor) -> _Grouped:
    lens = emb.lengths[idx].numpy()
    buckets = _bucket_of(lens)
    groups = []
    for L in np.unique(buckets):
        where = torch.from_numpy(np.nonzero(buckets == L)[0])
        rows = idx[where]
        ar = torch.arange(int(L))
        gi = emb.offsets[rows, None] + ar[None, :]
        gi = torch.where(ar[None, :] < emb.lengths[rows, None], gi, emb.pad)
        groups.append((int(L), where, emb.tokens[gi], emb.weights[gi]))
    return _Grouped(groups)


def dense_f1(
    emb_r: Embedded,
    rows: torch.Tensor,
    emb_c: Embedded,
    cols: torch.Tensor,
    reduce: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Exact F1 of every (rows[i], cols[j]) -> [R, C] float32, or, with ``reduce``, calls
    ``reduce(row_positions [m], col_positions [n], f1 [m, n])`` per tile and returns None.

    Rows and columns are grouped by length bucket so each tile is one GEMM
    [m*Lr, D] x [D, Lc*n] viewed as [m, Lr, Lc, n] and reduced in cache.
    """
    gr, gc = _group(emb_r, rows), _group(emb_c, cols)
    out = None if reduce is not None else torch.zeros(len(rows), len(cols))
    with torch.inference_mode():
        for lr, wr_pos, xr, wr in gr.groups:
            for lc, wc_pos, xc, wc in gc.groups:
                n_tile = max(1, min(len(wc_pos), DENSE_TILE_FLOATS // (lr * lc * 8)))
                m_tile = max(1, min(len(wr_pos), DENSE_TILE_FLOATS // (lr * lc * n_tile)))
                for j in range(0, len(wc_pos), n_tile):
                    # columns position-major ([Lc, n] rows) so every max/sum runs along the
                    # contiguous caption axis n, which vectorises (2-4x over reducing Lc last)
                    xcj = xc[j : j + n_tile]
                    n = xcj.shape[0]
                    xcj_flat = xcj.transpose(0, 1).reshape(lc * n, -1).T.contiguous()
                    wcj = wc[j : j + n_tile].T.contiguous()  # [Lc, n]
                    for i in range(0, len(wr_pos), m_tile):
                        xri = xr[i : i + m_tile]
                        m = xri.shape[0]
                        sim = (xri.reshape(m * lr, -1) @ xcj_flat).view(m, lr, lc, n)
                        p = torch.bmm(wr[i : i + m, None, :], sim.amax(2).clamp_min_(0))[:, 0]
                        r = (sim.amax(1).clamp_min_(0) * wcj).sum(1)
                        f = torch.nan_to_num_(2 * p * r / (p + r), nan=0.0)
                        if reduce is not None:
                            reduce(wr_pos[i : i + m], wc_pos[j : j + n], f)
                        else:
                            out[wr_pos[i : i + m, None], wc_pos[None, j : j + n]] = f
    return out


# --------------------------------------------------------------------------- shared preparation


@dataclass
class Prepared:
    """Unique strings of a call, embedded and weighted. ``index[s]`` = row of string s."""

    strings: list[str]
    index: dict[str, int]
    emb: Embedded
    bb: _Backbone


def prepare(
    texts: Sequence[str],
    cfg: ScorerSettings,
    idf_source: Sequence[str] | None,
    progress: Progress | None = None,
) -> Prepared:
    """Embed the unique ``texts``; with ``cfg.idf`` the idf table comes from ``idf_source``
    (bert_score computes it over the reference list, duplicates included)."""
    bb = _backbone(cfg.model, cfg.num_layers)
    strings = list(dict.fromkeys(texts))
    index = {s: i for i, s in enumerate(strings)}
    token_lists = [_encode(bb, s) for s in strings]
    emb = _embed(bb, token_lists, progress)
    if cfg.idf:
        source = idf_source if idf_source is not None else texts
        src_tokens = [token_lists[index[s]] if s in index else _encode(bb, s) for s in source]
        table, default = _idf_table(src_tokens)
        emb.reweight(table, (), default)
    else:
        emb.reweight(None, _special_ids(bb), 1.0)
    return Prepared(strings, index, emb, bb)


def rows_of(prep: Prepared, texts: Sequence[str]) -> torch.Tensor:
    return torch.tensor([prep.index[t] for t in texts], dtype=torch.long)


# --------------------------------------------------------------------------- public: scores


def pairwise_bertscore(
    cands: Sequence[str], refs: Sequence[str], cfg: ScorerSettings = BertScoreConfig()
) -> np.ndarray:
    """BERTScore F1 of aligned pairs (cands[i], refs[i]) -> [N] float32.

    Equals ``bert_score.score(cands, refs, model_type=<model>, num_layers=cfg.num_layers,
    idf=cfg.idf)[2]`` (no baseline rescaling) to ~1e-6; each distinct string is embedded once.
    """
    if len(cands) != len(refs):
        raise ValueError(f"pairwise_bertscore: {len(cands)} candidates but {len(refs)} references")
    if not cands:
        return np.zeros(0, dtype=np.float32)
    prep = prepare(list(cands) + list(refs), cfg, idf_source=refs)
    return greedy_f1(prep.emb, rows_of(prep, cands), rows_of(prep, refs)).numpy()


def multi_ref_bertscore(
    cands: Sequence[str], refs: Sequence[Sequence[str]], cfg: ScorerSettings = BertScoreConfig()
) -> np.ndarray:
    """F1 of each candidate against its best reference -> [N] (bert_score's multi-reference
    rule: the max over references; idf, if on, over all references flattened)."""
    if len(cands) != len(refs):
        raise ValueError(
            f"multi_ref_bertscore: {len(cands)} candidates but {len(refs)} reference lists"
        )
    if any(len(r) == 0 for r in refs):
        raise ValueError("multi_ref_bertscore: every candidate needs at least one reference")
    flat_c = [c for c, rs in zip(cands, refs) for _ in rs]
    flat_r = [r for rs in refs for r in rs]
    if not flat_c:
        return np.zeros(0, dtype=np.float32)
    prep = prepare(flat_c + flat_r, cfg, idf_source=flat_r)
    f = greedy_f1(prep.emb, rows_of(prep, flat_c), rows_of(prep, flat_r))
    group = torch.repeat_interleave(torch.arange(len(cands)), torch.tensor([len(r) for r in refs]))
    out = torch.full((len(cands),), -1.0).scatter_reduce_(0, group, f, reduce="amax")
    return out.numpy()


def top_bertscore(
    queries: Sequence[Sequence[str]],
    corpus: Sequence[str],
    k: int,
    cfg: ScorerSettings = BertScoreConfig(),
    exclude: Sequence[Sequence[int]] | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query clip (its reference captions), the ``k`` corpus captions of highest F1,
    F1 being the max over the query's references -> (indices [Q, k] int64, scores [Q, k]).

    Exact over the whole corpus (dense kernel). ``exclude[q]`` lists corpus indices never
    returned for query q (e.g. the clip's own captions). Rows with fewer than k admissible
    captions are padded with index -1 and score -inf. idf, if on, comes from the corpus.
    """
    n_q = len(queries)
    k_eff = min(k, len(corpus))
    idx_out = np.full((n_q, k), -1, dtype=np.int64)
    sc_out = np.full((n_q, k), -np.inf, dtype=np.float32)
    if n_q == 0 or k_eff == 0:
        return idx_out, sc_out
    flat = [r for q in queries for r in q]
    prep = prepare(flat + list(corpus), cfg, idf_source=corpus)
    rows_u = rows_of(prep, flat)
    ref_owner = torch.repeat_interleave(torch.arange(n_q), torch.tensor([len(q) for q in queries]))
    cols = rows_of(prep, corpus)
    best_s = torch.full((n_q, k_eff), -math.inf)
    best_i = torch.full((n_q, k_eff), -1, dtype=torch.long)
    ex_q = ex_c = None
    if exclude is not None:
        ex_q = torch.tensor([q for q, ex in enumerate(exclude) for _ in ex], dtype=torch.long)
        ex_c = torch.tensor([c for ex in exclude for c in ex], dtype=torch.long)
    # corpus chunks keep the [refs, chunk] score block around 64 MB
    chunk = max(k_eff, (1 << 24) // max(1, len(flat)))
    for start in range(0, len(corpus), chunk):
        cidx = torch.arange(start, min(len(corpus), start + chunk))
        f = dense_f1(prep.emb, rows_u, prep.emb, cols[cidx])
        assert f is not None
        per_q = torch.full((n_q, len(cidx)), -math.inf).scatter_reduce_(
            0, ref_owner[:, None].expand_as(f), f, reduce="amax"
        )
        if ex_q is not None:
            sel = (ex_c >= start) & (ex_c < start + len(cidx))
            per_q[ex_q[sel], ex_c[sel] - start] = -math.inf
        cand_s = torch.cat([best_s, per_q], 1)
        cand_i = torch.cat([best_i, cidx[None, :].expand(n_q, -1)], 1)
        top = torch.topk(cand_s, k_eff, dim=1)
        best_s, best_i = top.values, torch.gather(cand_i, 1, top.indices)
        if progress is not None:
            progress(len(cidx))
    best_i[torch.isinf(best_s)] = -1
    idx_out[:, :k_eff] = best_i.numpy()
    sc_out[:, :k_eff] = best_s.numpy()
    return idx_out, sc_out
