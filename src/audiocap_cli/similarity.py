"""Caption-to-caption BERTScore (paper step 1): exact values, fast all-pairs labels.

Koizumi et al. 2020 call two training captions *similar* when their BERTScore F1, min-max
normalised over all caption pairs, exceeds 0.7. This module computes

* ``pairwise_bertscore`` -- F1 of aligned (candidate, reference) pairs, equal to what
  ``bert_score.score(..., idf=cfg.idf, rescale_with_baseline=False)`` returns for the same model
  and layer (each caption embedded once, greedy matching batched);
* ``similarity_labels`` -- the sparse "similar" graph over *all* pairs of a caption list
  (49,838 AudioCaps captions = 1.24e9 pairs): the cosine of idf-weighted mean token vectors
  is computed for every pair with blocked matrix products, and only pairs above a cutoff
  calibrated per run (~1.3% of pairs on AudioCaps) are scored exactly (recall of truly
  similar pairs measured by bench/bench_similarity.py: 100% of 432 on 50 anchors x 5,000);
* ``clip_similarity`` -- clip-level similar lists for datasets with several captions per clip;
* ``top_bertscore`` / ``multi_ref_bertscore`` -- cross-set top-k and max-over-references scores
  for the evaluation oracles and the BERTScore metric column.

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

import dataclasses
import functools
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import resources
from .config import atomic_write_bytes, check_config, load_config, save_config
from .errors import AudiocapError, ConfigMismatchError, ModelNotFoundError

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

# Rows of the [rows, N] pooled lower-bound matrix computed at once: 512 x 49,838 floats is
# 100 MB, the largest block that stays cheap next to the token store (~1 GB for AudioCaps).
POOLED_ROWS_PER_BLOCK = 512


@dataclass(frozen=True)
class SimilarityConfig:
    """Settings of the caption-similarity stage (saved beside every label artefact).

    model: ``"minilm"`` (shipped all-MiniLM-L6-v2, offline default), a local HF folder, or a hub
      id such as ``"roberta-large"`` (the paper's backbone; must be in the local HF cache or
      downloadable). num_layers: layer whose output is used (None: bert_score's default for the
      model). idf: bert_score's idf weighting (idf computed over the caption list scored).
    threshold: normalised F1 above which two captions are similar (paper: 0.7).
    candidate_cos: pruning -- only pairs whose idf-weighted mean token vectors have cosine >=
      this are scored exactly. None: calibrated per run as (lowest such cosine among the
      truly similar pairs of ``calib_anchors`` random captions, each scored exactly against
      its nearest 4% of the corpus) - ``calib_slack``.
    min_sample: random pairs scored exactly for the global minimum, with the ``min_bottom``
      lowest-cosine pairs of every caption. seed: RNG seed of both samples.
    clip_rule: how several captions per clip combine in :func:`clip_similarity`: "max" (any
      caption pair similar; default), "match" (mean best-partner score) or "mean" (mean of all
      caption-pair scores). Measured on 300 Clotho development clips (1,500 captions):
      "mean" found 0 similar clip pairs, "match" 2, "max" 134 (31% of clips get >= 1
      neighbour), so only "max" yields usable retriever positives on 5-caption data.
    """

    model: str = "minilm"
    num_layers: int | None = 6
    idf: bool = False
    threshold: float = 0.7
    candidate_cos: float | None = None
    calib_anchors: int = 256
    calib_slack: float = 0.05
    min_sample: int = 100_000
    min_bottom: int = 1
    seed: int = 0
    clip_rule: str = "max"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise AudiocapError(f"similarity threshold must be in [0, 1], got {self.threshold}")
        if self.clip_rule not in ("mean", "match", "max"):
            raise AudiocapError(f"clip_rule must be 'mean', 'match' or 'max', got {self.clip_rule!r}")


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
    for owner_name, attr in (("encoder", "layer"), ("transformer", "layer"), ("", "layers"), ("", "layer")):
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
    n_hidden = int(getattr(net.config, "num_hidden_layers", 0) or getattr(net.config, "n_layers", 0))
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
class _Embedded:
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

    def reweight(self, idf: dict[int, float] | None, special: tuple[int, ...], default: float) -> None:
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
        return self.pooled.new_zeros(len(self.lengths), dtype=torch.bool).index_put_(
            (torch.from_numpy(np.repeat(np.arange(len(self.lengths)), self.lengths.numpy())),),
            self.weights[:-1] > 0,
            accumulate=True,
        ).logical_not()


def _idf_table(token_lists: Sequence[Sequence[int]]) -> tuple[dict[int, float], float]:
    """bert_score.utils.get_idf_dict: idf = log((M+1)/(df+1)), unseen tokens log(M+1)."""
    m = len(token_lists)
    df = Counter(t for ids in token_lists for t in set(ids))
    return {t: math.log((m + 1) / (c + 1)) for t, c in df.items()}, math.log(m + 1)


def _embed(bb: _Backbone, token_lists: list[list[int]], progress: Progress | None = None) -> _Embedded:
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
    emb = _Embedded(tokens, torch.from_numpy(offsets), torch.from_numpy(lengths), all_ids,
                    torch.zeros(0), torch.zeros(0))
    return emb


def _special_ids(bb: _Backbone) -> tuple[int, ...]:
    tok = bb.tokenizer
    return tuple(int(t) for t in (tok.sep_token_id, tok.cls_token_id) if t is not None)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- greedy matching


def _greedy_f1(emb: _Embedded, a: torch.Tensor, b: torch.Tensor, clamp: bool = True) -> torch.Tensor:
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
        while stop - pos > 1 and (stop - pos) * int(la[stop - 1] + lb[pos:stop].max()) * dim > 2 * MATCH_FLOATS_PER_BLOCK:
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


def _group(emb: _Embedded, idx: torch.Tensor) -> _Grouped:
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


def _dense_f1(
    emb_r: _Embedded, rows: torch.Tensor, emb_c: _Embedded, cols: torch.Tensor,
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
class _Prepared:
    """Unique strings of a call, embedded and weighted. ``index[s]`` = row of string s."""

    strings: list[str]
    index: dict[str, int]
    emb: _Embedded
    bb: _Backbone


def _prepare(texts: Sequence[str], cfg: SimilarityConfig, idf_source: Sequence[str] | None,
             progress: Progress | None = None) -> _Prepared:
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
    return _Prepared(strings, index, emb, bb)


def _ids(prep: _Prepared, texts: Sequence[str]) -> torch.Tensor:
    return torch.tensor([prep.index[t] for t in texts], dtype=torch.long)


# --------------------------------------------------------------------------- public: scores


def pairwise_bertscore(cands: Sequence[str], refs: Sequence[str], cfg: SimilarityConfig = SimilarityConfig()) -> np.ndarray:
    """BERTScore F1 of aligned pairs (cands[i], refs[i]) -> [N] float32.

    Equals ``bert_score.score(cands, refs, model_type=<model>, num_layers=cfg.num_layers,
    idf=cfg.idf)[2]`` (no baseline rescaling) to ~1e-6; each distinct string is embedded once.
    """
    if len(cands) != len(refs):
        raise ValueError(f"pairwise_bertscore: {len(cands)} candidates but {len(refs)} references")
    if not cands:
        return np.zeros(0, dtype=np.float32)
    prep = _prepare(list(cands) + list(refs), cfg, idf_source=refs)
    return _greedy_f1(prep.emb, _ids(prep, cands), _ids(prep, refs)).numpy()


def multi_ref_bertscore(cands: Sequence[str], refs: Sequence[Sequence[str]], cfg: SimilarityConfig = SimilarityConfig()) -> np.ndarray:
    """F1 of each candidate against its best reference -> [N] (bert_score's multi-reference
    rule: the max over references; idf, if on, over all references flattened)."""
    if len(cands) != len(refs):
        raise ValueError(f"multi_ref_bertscore: {len(cands)} candidates but {len(refs)} reference lists")
    if any(len(r) == 0 for r in refs):
        raise ValueError("multi_ref_bertscore: every candidate needs at least one reference")
    flat_c = [c for c, rs in zip(cands, refs) for _ in rs]
    flat_r = [r for rs in refs for r in rs]
    if not flat_c:
        return np.zeros(0, dtype=np.float32)
    prep = _prepare(flat_c + flat_r, cfg, idf_source=flat_r)
    f = _greedy_f1(prep.emb, _ids(prep, flat_c), _ids(prep, flat_r))
    group = torch.repeat_interleave(torch.arange(len(cands)), torch.tensor([len(r) for r in refs]))
    out = torch.full((len(cands),), -1.0).scatter_reduce_(0, group, f, reduce="amax")
    return out.numpy()


def top_bertscore(
    queries: Sequence[Sequence[str]],
    corpus: Sequence[str],
    k: int,
    cfg: SimilarityConfig = SimilarityConfig(),
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
    prep = _prepare(flat + list(corpus), cfg, idf_source=corpus)
    rows_u = _ids(prep, flat)
    ref_owner = torch.repeat_interleave(torch.arange(n_q), torch.tensor([len(q) for q in queries]))
    cols = _ids(prep, corpus)
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
        f = _dense_f1(prep.emb, rows_u, prep.emb, cols[cidx])
        assert f is not None
        per_q = torch.full((n_q, len(cidx)), -math.inf).scatter_reduce_(
            0, ref_owner[:, None].expand_as(f), f, reduce="amax")
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


# --------------------------------------------------------------------------- public: all-pairs labels

# Calibration anchors are scored against their nearest 4% of the corpus by pooled cosine:
# on AudioCaps every similar partner of a caption ranked within its top 61 of 4,000 (1.5%).
CALIB_FRACTION = 0.04


def captions_hash(captions: Sequence[str]) -> str:
    """sha256 of the caption list (order and duplicates matter)."""
    return hashlib.sha256(json.dumps(list(captions), ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class SimilarityLabels:
    """Sparse "similar" graph over N captions (CSR, symmetric, never a caption itself).

    indptr [N+1] int64; indices [E] int32 neighbour caption ids; scores [E] float32 normalised
    F1 in (threshold, 1]; raw_min/raw_max: global raw F1 range used for normalisation;
    raw_threshold = raw_min + threshold * (raw_max - raw_min); stats: how it was computed.
    """

    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    raw_min: float
    raw_max: float
    raw_threshold: float
    cfg: SimilarityConfig
    captions_sha256: str
    stats: dict[str, float] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, normalised scores) of caption i's similar captions."""
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.scores[a:b]

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw F1 -> [0, 1] with this run's global min/max (clipped)."""
        span = max(self.raw_max - self.raw_min, 1e-12)
        return np.clip((np.asarray(raw, dtype=np.float64) - self.raw_min) / span, 0.0, 1.0).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        """Write labels.npz and config.json (config + caption hash + stats) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(buf, indptr=self.indptr, indices=self.indices, scores=self.scores,
                 raw=np.array([self.raw_min, self.raw_max, self.raw_threshold]))
        atomic_write_bytes(directory / "labels.npz", buf.getvalue())
        save_config(self.cfg, directory / "config.json", captions_sha256=self.captions_sha256,
                    n_captions=len(self), stats=self.stats)

    @classmethod
    def load(cls, directory: str | Path, expected_cfg: SimilarityConfig | None = None,
             captions: Sequence[str] | None = None) -> "SimilarityLabels":
        """Load from ``directory``; ConfigMismatchError if built with another config or caption
        list, ModelNotFoundError if missing."""
        directory = Path(directory)
        cfg = load_config(SimilarityConfig, directory / "config.json")
        if expected_cfg is not None:
            check_config(expected_cfg, cfg, f"similarity labels in {directory}")
        meta = json.loads((directory / "config.json").read_text())
        if captions is not None and meta.get("captions_sha256") != captions_hash(captions):
            raise ConfigMismatchError(
                f"similarity labels in {directory} were built for a different caption list "
                f"({meta.get('n_captions')} captions); rebuild them"
            )
        path = directory / "labels.npz"
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: similarity labels not found")
        with np.load(path) as z:
            raw = z["raw"]
            return cls(z["indptr"], z["indices"], z["scores"], float(raw[0]), float(raw[1]),
                       float(raw[2]), cfg, str(meta.get("captions_sha256")), dict(meta.get("stats", {})))


class _Stages:
    """Turns per-stage fractions into percent increments for an optional progress callback."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.done = progress, 0.0
        self.sent = 0

    def advance(self, fraction: float) -> None:
        self.done = min(100.0, self.done + 100.0 * fraction)
        step = int(self.done) - self.sent
        if step > 0 and self.progress is not None:
            self.progress(step)
        self.sent += max(step, 0)


def _pooled_unit(emb: _Embedded) -> torch.Tensor:
    """[N, D] L2-normalised pooled vectors (zero rows for captions with no weighted token)."""
    norm = emb.pooled.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, emb.pooled / norm.clamp_min(1e-12), torch.zeros_like(emb.pooled))


def _raw_edges(emb: _Embedded, cfg: SimilarityConfig, counts: np.ndarray, stages: _Stages) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, float, float, dict[str, float]]:
    """Unique-level similar pairs (u < v, or u == v for repeated strings) with raw F1, plus
    (raw_min, raw_max) and stats. Work shares: calibration 5%, candidates 25%, exact 70%."""
    n = len(emb.lengths)
    rng = np.random.default_rng(cfg.seed)
    unit = _pooled_unit(emb)
    stats: dict[str, float] = {"unique_captions": float(n)}

    # raw max/min seeds: repeated strings score their self F1 (~1); a random sample of pairs
    dup = torch.from_numpy(np.nonzero(counts > 1)[0])
    self_f = _greedy_f1(emb, dup, dup) if len(dup) else torch.zeros(0)
    m = min(cfg.min_sample, n * (n - 1) // 2) if n > 1 else 0
    sa = torch.from_numpy(rng.integers(0, n, m)) if m else torch.zeros(0, dtype=torch.long)
    sb = torch.from_numpy(rng.integers(0, n, m)) if m else torch.zeros(0, dtype=torch.long)
    keep = sa != sb
    sample_f = _greedy_f1(emb, sa[keep], sb[keep])
    lo = [float(sample_f.min())] if len(sample_f) else []
    hi = [float(sample_f.max())] if len(sample_f) else []
    if len(self_f):
        hi.append(float(self_f.max()))

    # calibration of the pooled-cosine cutoff: anchors vs their nearest CALIB_FRACTION
    cutoff = cfg.candidate_cos
    if cutoff is None and n > 1:
        anchors = torch.from_numpy(rng.choice(n, min(cfg.calib_anchors, n), replace=False))
        kk = min(n - 1, max(32, int(math.ceil(CALIB_FRACTION * n))))
        cos = unit[anchors] @ unit.T
        cos[torch.arange(len(anchors)), anchors] = -math.inf
        top = torch.topk(cos, kk, dim=1)
        ca = anchors[:, None].expand(-1, kk).reshape(-1)
        cb = top.indices.reshape(-1)
        cf = _greedy_f1(emb, ca, cb)
        hi.append(float(cf.max()))
        raw_min0 = min(lo) if lo else 0.0
        thr0 = raw_min0 + cfg.threshold * (max(hi) - raw_min0)
        pos = cf > thr0
        c_sim = top.values.reshape(-1)[pos]
        # no similar pair found: fall back to the loosest cosine the calibration covered
        base = float(c_sim.min()) if len(c_sim) else float(top.values[:, -1].min())
        cutoff = base - cfg.calib_slack
        stats.update(calib_pairs=float(len(cf)), calib_similar=float(pos.sum()),
                     calib_min_cos=base, calib_kth_cos_min=float(top.values[:, -1].min()))
    stats["candidate_cos"] = float(cutoff if cutoff is not None else 1.0)
    stages.advance(0.05)

    # candidates: blocks of rows against later rows; keep pooled cosine >= cutoff, and each
    # row's min_bottom lowest-cosine partners (where the global F1 minimum is likely)
    cand_a: list[torch.Tensor] = []
    cand_b: list[torch.Tensor] = []
    bot_a: list[torch.Tensor] = []
    bot_b: list[torch.Tensor] = []
    col = torch.arange(n)
    for start in range(0, n, POOLED_ROWS_PER_BLOCK):
        rows = torch.arange(start, min(n, start + POOLED_ROWS_PER_BLOCK))
        cos = unit[rows] @ unit.T
        later = col[None, :] > rows[:, None]
        hit = (cos >= cutoff) & later
        r, c = torch.nonzero(hit, as_tuple=True)
        cand_a.append(rows[r])
        cand_b.append(c)
        if cfg.min_bottom > 0 and n > 1:
            cos[~later] = math.inf  # also excludes self
            has = later.any(1)
            k_b = min(cfg.min_bottom, n - 1)
            low = torch.topk(cos[has], k_b, dim=1, largest=False)
            ok = torch.isfinite(low.values)
            bot_a.append(rows[has][:, None].expand(-1, k_b)[ok])
            bot_b.append(low.indices[ok])
        stages.advance(0.25 * len(rows) / n)
    a = torch.cat(cand_a) if cand_a else torch.zeros(0, dtype=torch.long)
    b = torch.cat(cand_b) if cand_b else torch.zeros(0, dtype=torch.long)
    stats["candidate_pairs"] = float(len(a))
    if bot_a:
        bf = _greedy_f1(emb, torch.cat(bot_a), torch.cat(bot_b))
        if len(bf):
            lo.append(float(bf.min()))

    # exact F1 of candidates, in slices so progress moves
    f = torch.empty(len(a))
    step = 1 << 18
    for s0 in range(0, len(a), step):
        f[s0 : s0 + step] = _greedy_f1(emb, a[s0 : s0 + step], b[s0 : s0 + step])
        stages.advance(0.70 * min(step, len(a) - s0) / max(len(a), 1))
    if len(f):
        hi.append(float(f.max()))
        lo.append(float(f.min()))
    raw_min = min(lo) if lo else 0.0
    raw_max = max(hi) if hi else 1.0
    stats["sample_min"] = float(sample_f.min()) if len(sample_f) else float("nan")
    ea = torch.cat([a, dup]).numpy()
    eb = torch.cat([b, dup]).numpy()
    ef = torch.cat([f, self_f]).numpy()
    return ea, eb, ef, raw_min, raw_max, stats


def _expand(inverse: np.ndarray, ua: np.ndarray, ub: np.ndarray, uf: np.ndarray, n: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Unique-level similar pairs -> caption-level symmetric CSR (indptr, indices, scores)."""
    n_u = int(inverse.max()) + 1 if len(inverse) else 0
    order = np.argsort(inverse, kind="stable")
    members_ptr = np.zeros(n_u + 1, dtype=np.int64)
    np.cumsum(np.bincount(inverse, minlength=n_u), out=members_ptr[1:])
    # directed unique edges u -> v (both directions; u == v once)
    du = np.concatenate([ua, ub[ua != ub]])
    dv = np.concatenate([ub, ua[ua != ub]])
    df = np.concatenate([uf, uf[ua != ub]])
    # expand v to its member captions
    cnt_v = members_ptr[dv + 1] - members_ptr[dv]
    e_u = np.repeat(du, cnt_v)
    e_f = np.repeat(df, cnt_v)
    starts = np.repeat(members_ptr[dv], cnt_v)
    within = np.arange(len(e_u)) - np.repeat(np.cumsum(cnt_v) - cnt_v, cnt_v)
    e_v = order[starts + within]
    # group by u; every caption of u gets all of u's expanded edges (minus itself)
    o = np.argsort(e_u, kind="stable")
    e_u, e_v, e_f = e_u[o], e_v[o], e_f[o]
    u_ptr = np.zeros(n_u + 1, dtype=np.int64)
    np.cumsum(np.bincount(e_u, minlength=n_u), out=u_ptr[1:])
    deg = u_ptr[inverse + 1] - u_ptr[inverse]
    src = np.repeat(np.arange(n), deg)
    pos = np.repeat(u_ptr[inverse], deg) + (np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg))
    dst, sc = e_v[pos], e_f[pos]
    keep = dst != src
    src, dst, sc = src[keep], dst[keep], sc[keep]
    o = np.lexsort((dst, src))
    src, dst, sc = src[o], dst[o], sc[o]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst.astype(np.int32), sc.astype(np.float32)


def similarity_labels(captions: Sequence[str], cfg: SimilarityConfig = SimilarityConfig(),
                      progress: Progress | None = None) -> SimilarityLabels:
    """All-pairs BERTScore "similar" labels of ``captions`` (paper step 1).

    Pipeline: embed each distinct caption once; raw range -- max over repeated strings (self
    F1 ~1) and every pair scored, min over a random sample, each caption's lowest-cosine
    partner and all candidates (F1 >= 0 by construction, so a sampled 0 is the exact
    minimum); candidate pairs by pooled cosine >= ``candidate_cos`` (calibrated, see
    SimilarityConfig); exact F1 on candidates; pairs with normalised F1 > threshold.
    ``progress`` receives percent increments (sum 100).
    """
    return _labels_and_embedding(captions, cfg, progress)[0]


def _labels_and_embedding(captions: Sequence[str], cfg: SimilarityConfig, progress: Progress | None
                          ) -> tuple[SimilarityLabels, _Prepared | None]:
    """:func:`similarity_labels` plus the embedded unique captions (for the bench's checks)."""
    stages = _Stages(progress)
    n = len(captions)
    strings = list(dict.fromkeys(captions))
    index = {s: i for i, s in enumerate(strings)}
    inverse = np.array([index[c] for c in captions], dtype=np.int64)
    counts = np.bincount(inverse, minlength=len(strings)) if n else np.zeros(0, dtype=np.int64)
    if n == 0:
        return SimilarityLabels(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                                0.0, 1.0, cfg.threshold, cfg, captions_hash(captions), {}), None
    prep = _prepare(strings, cfg, idf_source=captions,
                    progress=None)  # embedding is ~1/3 of the time; report it as one step
    stages.advance(0.0)
    ua, ub, uf, raw_min, raw_max, stats = _raw_edges(prep.emb, cfg, counts, stages)
    raw_thr = raw_min + cfg.threshold * (raw_max - raw_min)
    sel = uf > raw_thr
    span = max(raw_max - raw_min, 1e-12)
    norm = np.clip((uf[sel] - raw_min) / span, 0.0, 1.0)
    indptr, indices, scores = _expand(inverse, ua[sel], ub[sel], norm, n)
    stats["similar_pairs"] = float(len(indices) // 2)
    stages.advance(1.0)
    labels = SimilarityLabels(indptr, indices, scores, raw_min, raw_max, raw_thr, cfg,
                              captions_hash(captions), stats)
    return labels, prep


def cached_similarity_labels(captions: Sequence[str], cfg: SimilarityConfig, directory: str | Path,
                             progress: Progress | None = None) -> SimilarityLabels:
    """Labels from ``directory`` when built from the same captions and config; else recompute
    and save there."""
    directory = Path(directory)
    if (directory / "config.json").is_file() and (directory / "labels.npz").is_file():
        try:
            return SimilarityLabels.load(directory, cfg, captions)
        except ConfigMismatchError:
            pass  # stale: rebuilt below
    labels = similarity_labels(captions, cfg, progress)
    labels.save(directory)
    return labels


# --------------------------------------------------------------------------- public: clip level

# Clotho and AudioCaps val/test have 5 captions per clip; 8 leaves room for other datasets
# while the "match" rule keeps fixed-width per-pair buffers.
MAX_CAPTIONS_PER_CLIP = 8


def clip_similarity(
    clip_captions: Sequence[Sequence[str]],
    cfg: SimilarityConfig = SimilarityConfig(),
    labels: SimilarityLabels | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Similar clips of every clip (sorted int64 arrays, never the clip itself).

    Caption-level labels over all captions flattened (clip by clip) give the raw min/max and
    the similar caption pairs (pass ``labels`` to reuse ones built for that flattened list).
    ``cfg.clip_rule``: "max" (default) -- some caption of a is similar to some caption of b;
    "match" -- the mean over both clips' captions of each caption's best normalised F1 in the
    other clip exceeds the threshold; "mean" -- the mean over all |a| x |b| pairs does. Both
    stricter rules imply "max", so they exactly re-score only the clip pairs "max" proposes.
    See SimilarityConfig for why "max" is the default.
    With one caption per clip both rules equal the caption labels.
    """
    flat = [c for caps in clip_captions for c in caps]
    owner = np.repeat(np.arange(len(clip_captions)), [len(c) for c in clip_captions])
    if labels is None:
        labels = similarity_labels(flat, cfg, progress)
    elif labels.captions_sha256 != captions_hash(flat):
        raise ConfigMismatchError("clip_similarity: the labels were built for a different caption list")
    src = np.repeat(np.arange(len(flat)), np.diff(labels.indptr))
    ca, cb = owner[src], owner[labels.indices]
    keep = ca < cb
    pairs = np.unique(np.stack([ca[keep], cb[keep]], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
    if cfg.clip_rule != "max" and len(pairs):
        if max(len(c) for c in clip_captions) > MAX_CAPTIONS_PER_CLIP:
            raise AudiocapError(f"clip_similarity: clips hold at most {MAX_CAPTIONS_PER_CLIP} captions")
        prep = _prepare(flat, cfg, idf_source=flat)
        starts = np.concatenate([[0], np.cumsum([len(c) for c in clip_captions])])
        sizes = np.diff(starts)
        na, nb = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
        cnt = na * nb
        pid = np.repeat(np.arange(len(pairs)), cnt)
        within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ia = starts[pairs[pid, 0]] + within // nb[pid]
        ib = starts[pairs[pid, 1]] + within % nb[pid]
        ua = _ids(prep, [flat[i] for i in ia])
        ub = _ids(prep, [flat[i] for i in ib])
        f = labels.normalise(_greedy_f1(prep.emb, ua, ub).numpy())
        if cfg.clip_rule == "mean":
            score = np.bincount(pid, weights=f, minlength=len(pairs)) / cnt
        else:  # "match": every caption's best partner in the other clip, averaged both ways
            row_key = pid * MAX_CAPTIONS_PER_CLIP + within // nb[pid]
            col_key = pid * MAX_CAPTIONS_PER_CLIP + within % nb[pid]
            row_best = np.full(len(pairs) * MAX_CAPTIONS_PER_CLIP, -np.inf)
            np.maximum.at(row_best, row_key, f)
            col_best = np.full(len(pairs) * MAX_CAPTIONS_PER_CLIP, -np.inf)
            np.maximum.at(col_best, col_key, f)
            row_best[~np.isfinite(row_best)] = 0.0
            col_best[~np.isfinite(col_best)] = 0.0
            score = 0.5 * (row_best.reshape(-1, MAX_CAPTIONS_PER_CLIP).sum(1) / na + col_best.reshape(-1, MAX_CAPTIONS_PER_CLIP).sum(1) / nb)
        pairs = pairs[score > cfg.threshold]
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else pairs
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in clip_captions]
    if len(both):
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        bounds = np.searchsorted(both[:, 0], np.arange(len(clip_captions) + 1))
        out = [both[bounds[i] : bounds[i + 1], 1].astype(np.int64) for i in range(len(clip_captions))]
    return out
