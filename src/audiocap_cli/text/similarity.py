"""Caption-to-caption "similar" labels (paper step 1) over BERTScore from :mod:`bertscore`.

Koizumi et al. 2020 call two training captions *similar* when their BERTScore F1, min-max
normalised over all caption pairs, exceeds 0.7. This module computes

* ``similarity_labels`` -- the sparse "similar" graph over *all* pairs of a caption list
  (49,838 AudioCaps captions = 1.24e9 pairs): the cosine of idf-weighted mean token vectors
  is computed for every pair with blocked matrix products, and only pairs above a cutoff
  calibrated per run (~1.3% of pairs on AudioCaps) are scored exactly (recall of truly
  similar pairs measured by bench/speed/bench_similarity.py: 100% of 432 on 50 anchors x 5,000);
* ``clip_similarity`` -- clip-level similar lists for datasets with several captions per clip.

The exact scores (and why F1 >= 0, so a global minimum of exactly 0 is the true minimum) are
:mod:`bertscore`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import atomic_write_bytes, check_config, load_config, save_config
from ..errors import AudiocapError, ConfigMismatchError, ModelNotFoundError
from .bertscore import Embedded, Prepared, Progress, greedy_f1, prepare, rows_of

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
            raise AudiocapError(
                f"clip_rule must be 'mean', 'match' or 'max', got {self.clip_rule!r}"
            )


# --------------------------------------------------------------------------- public: all-pairs labels

# Calibration anchors are scored against their nearest 4% of the corpus by pooled cosine:
# on AudioCaps every similar partner of a caption ranked within its top 61 of 4,000 (1.5%).
CALIB_FRACTION = 0.04


def captions_hash(captions: Sequence[str]) -> str:
    """sha256 of the caption list (order and duplicates matter)."""
    return hashlib.sha256(
        json.dumps(list(captions), ensure_ascii=False).encode("utf-8")
    ).hexdigest()


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
        return np.clip((np.asarray(raw, dtype=np.float64) - self.raw_min) / span, 0.0, 1.0).astype(
            np.float32
        )

    def save(self, directory: str | Path) -> None:
        """Write labels.npz and config.json (config + caption hash + stats) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(
            buf,
            indptr=self.indptr,
            indices=self.indices,
            scores=self.scores,
            raw=np.array([self.raw_min, self.raw_max, self.raw_threshold]),
        )
        atomic_write_bytes(directory / "labels.npz", buf.getvalue())
        save_config(
            self.cfg,
            directory / "config.json",
            captions_sha256=self.captions_sha256,
            n_captions=len(self),
            stats=self.stats,
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expected_cfg: SimilarityConfig | None = None,
        captions: Sequence[str] | None = None,
    ) -> "SimilarityLabels":
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
            return cls(
                z["indptr"],
                z["indices"],
                z["scores"],
                float(raw[0]),
                float(raw[1]),
                float(raw[2]),
                cfg,
                str(meta.get("captions_sha256")),
                dict(meta.get("stats", {})),
            )


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


def _pooled_unit(emb: Embedded) -> torch.Tensor:
    """[N, D] L2-normalised pooled vectors (zero rows for captions with no weighted token)."""
    norm = emb.pooled.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, emb.pooled / norm.clamp_min(1e-12), torch.zeros_like(emb.pooled))


def _raw_edges(
    emb: Embedded, cfg: SimilarityConfig, counts: np.ndarray, stages: _Stages
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, dict[str, float]]:
    """Unique-level similar pairs (u < v, or u == v for repeated strings) with raw F1, plus
    (raw_min, raw_max) and stats. Work shares: calibration 5%, candidates 25%, exact 70%."""
    n = len(emb.lengths)
    rng = np.random.default_rng(cfg.seed)
    unit = _pooled_unit(emb)
    stats: dict[str, float] = {"unique_captions": float(n)}
    lo: list[float] = []
    hi: list[float] = []
    dup, self_f, sample_f = _range_seeds(emb, cfg, counts, rng, lo, hi)
    cutoff = cfg.candidate_cos
    if cutoff is None and n > 1:
        cutoff = _calibrate_cutoff(emb, unit, cfg, rng, lo, hi, stats)
    stats["candidate_cos"] = float(cutoff if cutoff is not None else 1.0)
    stages.advance(0.05)
    a, b = _candidates(emb, unit, cutoff, cfg.min_bottom, lo, stages)
    stats["candidate_pairs"] = float(len(a))
    # exact F1 of candidates, in slices so progress moves
    f = torch.empty(len(a))
    step = 1 << 18
    for s0 in range(0, len(a), step):
        f[s0 : s0 + step] = greedy_f1(emb, a[s0 : s0 + step], b[s0 : s0 + step])
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


def _range_seeds(
    emb: Embedded,
    cfg: SimilarityConfig,
    counts: np.ndarray,
    rng: np.random.Generator,
    lo: list[float],
    hi: list[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeds of the raw max/min (appended to ``hi``/``lo``): repeated strings score their self
    F1 (~1); a random sample of pairs. Returns (repeated ids, their self F1, the sample's F1)."""
    n = len(emb.lengths)
    dup = torch.from_numpy(np.nonzero(counts > 1)[0])
    self_f = greedy_f1(emb, dup, dup) if len(dup) else torch.zeros(0)
    m = min(cfg.min_sample, n * (n - 1) // 2) if n > 1 else 0
    sa = torch.from_numpy(rng.integers(0, n, m)) if m else torch.zeros(0, dtype=torch.long)
    sb = torch.from_numpy(rng.integers(0, n, m)) if m else torch.zeros(0, dtype=torch.long)
    keep = sa != sb
    sample_f = greedy_f1(emb, sa[keep], sb[keep])
    if len(sample_f):
        lo.append(float(sample_f.min()))
        hi.append(float(sample_f.max()))
    if len(self_f):
        hi.append(float(self_f.max()))
    return dup, self_f, sample_f


def _calibrate_cutoff(
    emb: Embedded,
    unit: torch.Tensor,
    cfg: SimilarityConfig,
    rng: np.random.Generator,
    lo: list[float],
    hi: list[float],
    stats: dict[str, float],
) -> float:
    """The pooled-cosine cutoff: the lowest cosine of a truly similar pair among random anchors
    scored exactly against their nearest CALIB_FRACTION, minus ``cfg.calib_slack``."""
    n = len(emb.lengths)
    anchors = torch.from_numpy(rng.choice(n, min(cfg.calib_anchors, n), replace=False))
    kk = min(n - 1, max(32, int(math.ceil(CALIB_FRACTION * n))))
    cos = unit[anchors] @ unit.T
    cos[torch.arange(len(anchors)), anchors] = -math.inf
    top = torch.topk(cos, kk, dim=1)
    ca = anchors[:, None].expand(-1, kk).reshape(-1)
    cb = top.indices.reshape(-1)
    cf = greedy_f1(emb, ca, cb)
    hi.append(float(cf.max()))
    raw_min0 = min(lo) if lo else 0.0
    thr0 = raw_min0 + cfg.threshold * (max(hi) - raw_min0)
    pos = cf > thr0
    c_sim = top.values.reshape(-1)[pos]
    # no similar pair found: fall back to the loosest cosine the calibration covered
    base = float(c_sim.min()) if len(c_sim) else float(top.values[:, -1].min())
    stats.update(
        calib_pairs=float(len(cf)),
        calib_similar=float(pos.sum()),
        calib_min_cos=base,
        calib_kth_cos_min=float(top.values[:, -1].min()),
    )
    return base - cfg.calib_slack


def _candidates(
    emb: Embedded,
    unit: torch.Tensor,
    cutoff: float | None,
    min_bottom: int,
    lo: list[float],
    stages: _Stages,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (a < b) whose pooled cosine is >= ``cutoff``, in blocks of rows against later rows;
    each row's ``min_bottom`` lowest-cosine partners (where the global F1 minimum is likely) are
    scored on the way and their minimum appended to ``lo``."""
    n = len(emb.lengths)
    cand_a: list[torch.Tensor] = []
    cand_b: list[torch.Tensor] = []
    bot_a: list[torch.Tensor] = []
    bot_b: list[torch.Tensor] = []
    col = torch.arange(n)
    for start in range(0, n, POOLED_ROWS_PER_BLOCK):
        rows = torch.arange(start, min(n, start + POOLED_ROWS_PER_BLOCK))
        cos = unit[rows] @ unit.T
        later = col[None, :] > rows[:, None]
        r, c = torch.nonzero((cos >= cutoff) & later, as_tuple=True)
        cand_a.append(rows[r])
        cand_b.append(c)
        if min_bottom > 0 and n > 1:
            cos[~later] = math.inf  # also excludes self
            has = later.any(1)
            k_b = min(min_bottom, n - 1)
            low = torch.topk(cos[has], k_b, dim=1, largest=False)
            ok = torch.isfinite(low.values)
            bot_a.append(rows[has][:, None].expand(-1, k_b)[ok])
            bot_b.append(low.indices[ok])
        stages.advance(0.25 * len(rows) / n)
    if bot_a:
        bf = greedy_f1(emb, torch.cat(bot_a), torch.cat(bot_b))
        if len(bf):
            lo.append(float(bf.min()))
    a = torch.cat(cand_a) if cand_a else torch.zeros(0, dtype=torch.long)
    b = torch.cat(cand_b) if cand_b else torch.zeros(0, dtype=torch.long)
    return a, b


def _expand(
    inverse: np.ndarray, ua: np.ndarray, ub: np.ndarray, uf: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    pos = np.repeat(u_ptr[inverse], deg) + (
        np.arange(deg.sum()) - np.repeat(np.cumsum(deg) - deg, deg)
    )
    dst, sc = e_v[pos], e_f[pos]
    keep = dst != src
    src, dst, sc = src[keep], dst[keep], sc[keep]
    o = np.lexsort((dst, src))
    src, dst, sc = src[o], dst[o], sc[o]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst.astype(np.int32), sc.astype(np.float32)


def similarity_labels(
    captions: Sequence[str],
    cfg: SimilarityConfig = SimilarityConfig(),
    progress: Progress | None = None,
) -> SimilarityLabels:
    """All-pairs BERTScore "similar" labels of ``captions`` (paper step 1).

    Pipeline: embed each distinct caption once; raw range -- max over repeated strings (self
    F1 ~1) and every pair scored, min over a random sample, each caption's lowest-cosine
    partner and all candidates (F1 >= 0 by construction, so a sampled 0 is the exact
    minimum); candidate pairs by pooled cosine >= ``candidate_cos`` (calibrated, see
    SimilarityConfig); exact F1 on candidates; pairs with normalised F1 > threshold.
    ``progress`` receives percent increments (sum 100).
    """
    return _labels_and_embedding(captions, cfg, progress)[0]


def _labels_and_embedding(
    captions: Sequence[str], cfg: SimilarityConfig, progress: Progress | None
) -> tuple[SimilarityLabels, Prepared | None]:
    """:func:`similarity_labels` plus the embedded unique captions (for the bench's checks)."""
    stages = _Stages(progress)
    n = len(captions)
    strings = list(dict.fromkeys(captions))
    index = {s: i for i, s in enumerate(strings)}
    inverse = np.array([index[c] for c in captions], dtype=np.int64)
    counts = np.bincount(inverse, minlength=len(strings)) if n else np.zeros(0, dtype=np.int64)
    if n == 0:
        return SimilarityLabels(
            np.zeros(1, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            0.0,
            1.0,
            cfg.threshold,
            cfg,
            captions_hash(captions),
            {},
        ), None
    prep = prepare(
        strings, cfg, idf_source=captions, progress=None
    )  # embedding is ~1/3 of the time; report it as one step
    stages.advance(0.0)
    ua, ub, uf, raw_min, raw_max, stats = _raw_edges(prep.emb, cfg, counts, stages)
    raw_thr = raw_min + cfg.threshold * (raw_max - raw_min)
    sel = uf > raw_thr
    span = max(raw_max - raw_min, 1e-12)
    norm = np.clip((uf[sel] - raw_min) / span, 0.0, 1.0)
    indptr, indices, scores = _expand(inverse, ua[sel], ub[sel], norm, n)
    stats["similar_pairs"] = float(len(indices) // 2)
    stages.advance(1.0)
    labels = SimilarityLabels(
        indptr, indices, scores, raw_min, raw_max, raw_thr, cfg, captions_hash(captions), stats
    )
    return labels, prep


def cached_similarity_labels(
    captions: Sequence[str],
    cfg: SimilarityConfig,
    directory: str | Path,
    progress: Progress | None = None,
) -> SimilarityLabels:
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
        raise ConfigMismatchError(
            "clip_similarity: the labels were built for a different caption list"
        )
    src = np.repeat(np.arange(len(flat)), np.diff(labels.indptr))
    ca, cb = owner[src], owner[labels.indices]
    keep = ca < cb
    pairs = (
        np.unique(np.stack([ca[keep], cb[keep]], 1), axis=0)
        if keep.any()
        else np.zeros((0, 2), np.int64)
    )
    if cfg.clip_rule != "max" and len(pairs):
        if max(len(c) for c in clip_captions) > MAX_CAPTIONS_PER_CLIP:
            raise AudiocapError(
                f"clip_similarity: clips hold at most {MAX_CAPTIONS_PER_CLIP} captions"
            )
        pairs = pairs[_clip_pair_scores(pairs, clip_captions, flat, labels, cfg) > cfg.threshold]
    return _neighbour_lists(pairs, len(clip_captions))


def _clip_pair_scores(
    pairs: np.ndarray,
    clip_captions: Sequence[Sequence[str]],
    flat: list[str],
    labels: SimilarityLabels,
    cfg: SimilarityConfig,
) -> np.ndarray:
    """Clip-level normalised scores of clip ``pairs`` [P, 2] by ``cfg.clip_rule`` ("mean" or
    "match"), every caption pair of the two clips scored exactly."""
    prep = prepare(flat, cfg, idf_source=flat)
    starts = np.concatenate([[0], np.cumsum([len(c) for c in clip_captions])])
    sizes = np.diff(starts)
    na, nb = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
    cnt = na * nb
    pid = np.repeat(np.arange(len(pairs)), cnt)
    within = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    ia = starts[pairs[pid, 0]] + within // nb[pid]
    ib = starts[pairs[pid, 1]] + within % nb[pid]
    ua = rows_of(prep, [flat[i] for i in ia])
    ub = rows_of(prep, [flat[i] for i in ib])
    f = labels.normalise(greedy_f1(prep.emb, ua, ub).numpy())
    if cfg.clip_rule == "mean":
        return np.bincount(pid, weights=f, minlength=len(pairs)) / cnt
    # "match": every caption's best partner in the other clip, averaged both ways
    best = []
    for key in (
        pid * MAX_CAPTIONS_PER_CLIP + within // nb[pid],
        pid * MAX_CAPTIONS_PER_CLIP + within % nb[pid],
    ):
        b = np.full(len(pairs) * MAX_CAPTIONS_PER_CLIP, -np.inf)
        np.maximum.at(b, key, f)
        b[~np.isfinite(b)] = 0.0
        best.append(b.reshape(-1, MAX_CAPTIONS_PER_CLIP).sum(1))
    return 0.5 * (best[0] / na + best[1] / nb)


def _neighbour_lists(pairs: np.ndarray, n_clips: int) -> list[np.ndarray]:
    """Clip pairs (a < b) [P, 2] -> each clip's sorted neighbours, both directions."""
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else pairs
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(n_clips)]
    if len(both):
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        bounds = np.searchsorted(both[:, 0], np.arange(n_clips + 1))
        out = [both[bounds[i] : bounds[i + 1], 1].astype(np.int64) for i in range(n_clips)]
    return out
