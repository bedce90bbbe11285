"""Training of the retriever's ``EmbedNet`` (``retrieval/retriever.py``) with a triplet loss.

Labels say which clips are "similar" (``text/similarity.py``); each batch holds anchors and one
similar clip of each, positives are drawn at random and negatives mined semi-hard
(:func:`triplet_loss`). The optimiser is AdaBound, as in the paper; the best epoch is chosen by
validation triplet loss or precision@1. Under torchrun every rank embeds a slice of each batch
and the mining sees the whole batch; rank 0 alone validates and writes the run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..config import check_config, load_config, save_config
from ..errors import ConfigMismatchError, DatasetError
from ..retrieval.retriever import CONFIG_NAME, EmbedNet, RetrieverConfig, check_frames, embed
from ..scale import distributed
from .rundir import RunDir, RunState

# Validation batches are drawn with this seed every epoch, so val losses are comparable.
VAL_SEED = 1234
# Rows of the query block in the exact nearest-neighbour search of precision_at_1:
# 1024 x N float32 stays ~200 MB at N = 50k.
_P1_BLOCK = 1024


@dataclass
class TripletStats:
    """What :func:`triplet_loss` chose. ``positive``/``negative`` are ``[B]`` batch indices,
    -1 for skipped anchors (no positive or no negative in the batch)."""

    anchors: int  # anchors used
    active: float  # fraction of used anchors with a non-zero loss
    semi_hard: float  # fraction whose negative was semi-hard (within the margin band)
    fallback: float  # fraction with no negative farther than the positive (see triplet_loss)
    positive: torch.Tensor
    negative: torch.Tensor


def triplet_loss(
    emb: torch.Tensor,
    similar: torch.Tensor,
    margin: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, TripletStats]:
    """Triplet loss with random positives and semi-hard negatives (FaceNet, Schroff et al. 2015).

    ``emb`` ``[B, E]``; ``similar`` ``[B, B]`` bool (``similar[a, j]``: j may be a's positive;
    the diagonal is ignored; everything else not similar is a negative). Distances are squared
    L2. For each anchor with >= 1 positive and >= 1 negative in the batch:

    * positive p: uniformly random among its similar clips (drawn with ``generator``);
    * negative n: the closest negative with ``D(a,p) <= D(a,n)``. When that one is also
      ``< D(a,p) + margin`` it is the semi-hard negative and the anchor has a loss; when it is
      farther, no semi-hard negative exists and the anchor's loss is 0 (already satisfied).
    * fallback, when every negative is closer than the positive: the *farthest* negative (the
      easiest hard one), as TensorFlow Addons' ``triplet_semihard_loss`` does; the hardest
      negative here makes training collapse early (FaceNet section 3.2).

    Anchors without a positive or negative are skipped. Loss = mean over used anchors of
    ``relu(D(a,p) - D(a,n) + margin)`` (0 with a graph when none is used).
    """
    b = emb.shape[0]
    sq = (emb * emb).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp_min(0.0)  # [B, B]
    eye = torch.eye(b, dtype=torch.bool, device=emb.device)
    similar = similar.to(torch.bool)
    pos_mask = similar & ~eye
    neg_mask = ~similar & ~eye
    used = pos_mask.any(1) & neg_mask.any(1)  # [B]

    with torch.no_grad():
        scores = torch.rand(b, b, generator=generator, device=emb.device)
        pos = torch.where(pos_mask, scores, -1.0).argmax(1)  # [B] random similar clip
        d = dist.detach()
        d_ap = d.gather(1, pos[:, None])  # [B, 1]
        farther = neg_mask & (d >= d_ap)
        has_farther = farther.any(1)
        nearest_farther = torch.where(farther, d, math.inf).argmin(1)
        farthest_neg = torch.where(neg_mask, d, -math.inf).argmax(1)
        neg = torch.where(has_farther, nearest_farther, farthest_neg)  # [B]

    d_pos = dist.gather(1, pos[:, None]).squeeze(1)
    d_neg = dist.gather(1, neg[:, None]).squeeze(1)
    per_anchor = F.relu(d_pos - d_neg + margin)[used]  # [A]
    n_used = int(used.sum())
    loss = per_anchor.mean() if n_used else emb.sum() * 0.0

    with torch.no_grad():
        semi = has_farther & (d_neg.detach() < d_pos.detach() + margin)
        denom = max(n_used, 1)
        stats = TripletStats(
            anchors=n_used,
            active=float((per_anchor > 0).sum()) / denom,
            semi_hard=float((semi & used).sum()) / denom,
            fallback=float((~has_farther & used).sum()) / denom,
            positive=torch.where(used, pos, -1),
            negative=torch.where(used, neg, -1),
        )
    return loss, stats


def precision_at_1(emb: np.ndarray, similar: Any) -> float:
    """Fraction of clips (with >= 1 similar clip) whose exact nearest neighbour (squared L2,
    itself excluded) is labelled similar. ``emb`` ``[N, E]``; ``similar[i]``: indices."""
    return _precision_at_1(emb, _similar_matrix(similar, len(emb), self_loops=False))


def _precision_at_1(emb: np.ndarray, s: sp.csr_matrix) -> float:
    rows = np.flatnonzero(np.diff(s.indptr) > 0)
    if len(rows) == 0:
        return math.nan
    e = np.asarray(emb, dtype=np.float32)
    sq = (e * e).sum(1)
    hits = 0
    for start in range(0, len(rows), _P1_BLOCK):
        r = rows[start : start + _P1_BLOCK]
        # ||q - x||^2 minus the per-row constant ||q||^2: enough for the argmin.
        d = sq[None, :] - 2.0 * (e[r] @ e.T)  # [R, N]
        d[np.arange(len(r)), r] = np.inf
        nn_idx = d.argmin(1)
        hits += int(np.asarray(s[r, nn_idx]).sum())
    return hits / len(rows)


def train_retriever(
    train_frames: np.ndarray,
    train_similar: Sequence[np.ndarray] | Any,
    val_frames: np.ndarray,
    val_similar: Sequence[np.ndarray] | Any,
    cfg: RetrieverConfig,
    run_dir: str | Path,
    epochs: int,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    keep_state: bool = False,
) -> Path:
    """Train an EmbedNet with the triplet loss; returns ``run_dir`` holding ``best.safetensors``
    (best validation epoch), ``retriever.json`` and ``metrics.jsonl``; ``last.safetensors`` (the
    resumable state) while the run is unfinished, or after it with ``keep_state``.

    ``*_frames`` ``[N, T, D_a]``; ``*_similar[i]``: indices (into the same split) of clips
    similar to clip i (made symmetric here); a scipy sparse matrix or CSR-like labels
    (``indptr``/``indices``) work too. ``epochs`` is the total to reach: a resumed run
    (``resume=True`` and ``last.safetensors`` present, same config and data shape) continues from its
    last finished epoch with the same random streams, so an interrupted run ends as an
    uninterrupted one would. ``resume=False`` starts over. ``progress(1)`` after each epoch.

    Batches (``batch_size`` B): each epoch shuffles all clips into groups of B/2 anchors and
    adds one random similar clip per anchor that has one, so every such anchor has a positive
    in its batch; clips without any similar clip still serve as anchors' negatives.
    Optimiser: AdaBound (lr -> final_lr), as in the paper. The whole run leaves the caller's
    global torch RNG untouched.
    """
    from pytorch_optimizer import AdaBound

    s_train, s_val, data_key = _labels(train_frames, train_similar, val_frames, val_similar, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EmbedNet(cfg)
        distributed.broadcast_params(net)
        opt = AdaBound(net.parameters(), lr=cfg.lr, final_lr=cfg.final_lr)
        loop = _RetrieverLoop(
            net,
            opt,
            np.random.default_rng(seed),
            torch.Generator().manual_seed(seed),
            RunDir(run_dir),
            cfg,
            data_key,
        )
        loop.start(resume)
        if progress is not None and loop.state.epoch:  # a resumed run's finished epochs
            progress(min(loop.state.epoch, epochs))
        while loop.state.epoch < epochs:
            t0 = time.perf_counter()
            if distributed.active():  # each rank its own dropout masks, reproducible on resume
                torch.manual_seed(seed * 1_000_003 + loop.state.epoch * 7919 + distributed.rank())
            losses, active = loop.train_epoch(train_frames, s_train)
            loop.end_epoch(val_frames, s_val, losses, active, t0)
            if progress is not None:
                progress(1)
    if distributed.is_main():
        loop.run.finish(keep_state)
    distributed.barrier()
    return loop.run.path


def _labels(
    train_frames: np.ndarray,
    train_similar: Any,
    val_frames: np.ndarray,
    val_similar: Any,
    cfg: RetrieverConfig,
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[Any]]:
    """Checked symmetric similarity matrices of both splits, and the data key a resume checks."""
    check_frames(train_frames, cfg, "training frames")
    check_frames(val_frames, cfg, "validation frames")
    for name, fr, sim in (
        ("training", train_frames, train_similar),
        ("validation", val_frames, val_similar),
    ):
        if _n_lists(sim) != len(fr):
            raise DatasetError(name, [f"{_n_lists(sim)} similarity lists for {len(fr)} clips"])
    s_train = _similar_matrix(train_similar, len(train_frames), self_loops=False)
    s_val = _similar_matrix(val_similar, len(val_frames), self_loops=False)
    if s_train.nnz == 0:
        raise DatasetError(
            "training", ["no clip has a similar clip: nothing to train the retriever on"]
        )
    if s_val.nnz == 0:
        raise DatasetError(
            "validation", ["no clip has a similar clip: cannot validate the retriever"]
        )
    return (
        s_train,
        s_val,
        [list(train_frames.shape), int(s_train.nnz), list(val_frames.shape), int(s_val.nnz)],
    )


@dataclass
class _RetrieverLoop:
    """The state of one :func:`train_retriever` run and its three phases (start, epoch, end of
    epoch). Under torchrun every rank runs it; rank 0 alone validates and writes."""

    net: EmbedNet
    opt: Any
    rng: np.random.Generator  # batches
    gen: torch.Generator  # triplet positives
    run: RunDir
    cfg: RetrieverConfig
    data_key: list[Any]
    state: RunState = field(default_factory=RunState)

    def start(self, resume: bool) -> None:
        """Resume the run (same config and data, same random streams) or start it over."""
        run, cfg_path = self.run, self.run.path / CONFIG_NAME
        if not distributed.gather_object(bool(resume and run.can_resume()))[0]:  # rank 0 decides
            if distributed.is_main():
                run.reset()
                save_config(self.cfg, cfg_path, embedding_dim=self.cfg.dim)
            distributed.barrier()
            return
        check_config(self.cfg, load_config(RetrieverConfig, cfg_path), f"retriever run {run.path}")
        weights, optim_state, state = run.resume()
        if state.extra.get("data") != self.data_key:
            raise ConfigMismatchError(
                f"retriever run {run.path} was trained on other data "
                f"(shapes/labels {state.extra.get('data')} != {self.data_key}); use --no-resume or another dir"
            )
        self.net.load_state_dict(weights)
        self.opt.load_state_dict(optim_state)
        self.rng.bit_generator.state = state.extra["np_rng"]
        self.gen.set_state(state.extra["gen"])
        torch.set_rng_state(state.extra["torch_rng"])
        self.state = state
        if distributed.is_main():
            run.trim_metrics(state.epoch)
        distributed.barrier()

    def train_epoch(self, frames: np.ndarray, s: sp.csr_matrix) -> tuple[list[float], list[float]]:
        """One epoch of triplet steps; returns the steps' losses and active-anchor fractions."""
        self.net.train()
        losses: list[float] = []
        active: list[float] = []
        for idx in _batches(s, self.cfg.batch_size, self.rng):
            emb = _embed_batch(self.net, frames, idx)
            loss, st = triplet_loss(
                emb, torch.from_numpy(_batch_similar(s, idx)), self.cfg.margin, self.gen
            )
            if st.anchors == 0:
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_grads(list(self.net.parameters()))
            self.opt.step()
            losses.append(float(loss.detach()))
            active.append(st.active)
        return losses, active

    def end_epoch(
        self,
        val_frames: np.ndarray,
        s_val: sp.csr_matrix,
        losses: list[float],
        active: list[float],
        t0: float,
    ) -> None:
        """Validate, keep the best weights, checkpoint and log (rank 0; the others count the epoch)."""
        state = self.state
        state.epoch += 1
        if not distributed.is_main():
            return
        val_loss, val_p1 = _validate(self.net, val_frames, s_val, self.cfg)
        metric = val_loss if self.cfg.select_by == "loss" else -val_p1
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        improved = self.run.update_best(state, metric, weights)
        if not self.run.best.is_file():  # a NaN metric (no val triplet formed) never "improves"
            self.run.save_best(weights)
            state.best_epoch = state.epoch
        state.extra = {
            "data": self.data_key,
            "np_rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        self.run.save(weights, self.opt.state_dict(), state)
        self.run.log(
            {
                "epoch": state.epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "train_active": float(np.mean(active)) if active else math.nan,
                "val_loss": val_loss,
                "val_p_at_1": val_p1,
                "best": improved,
                "seconds": round(time.perf_counter() - t0, 4),
            }
        )


def _embed_batch(net: EmbedNet, frames: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Embeddings ``[B, E]`` of clips ``idx``, with gradients. Under torchrun each rank embeds
    its interleaved slice and all-gathers the others' rows, so the semi-hard mining sees the
    whole global batch, in the one-process order, and summing the ranks' gradients gives the
    one-process gradient."""
    w = distributed.world()
    if w == 1:
        return net(torch.from_numpy(np.ascontiguousarray(frames[idx], dtype=np.float32)))
    r = distributed.rank()
    mine = idx[r::w]
    x = torch.from_numpy(np.ascontiguousarray(frames[mine], dtype=np.float32))
    local = net(x) if len(mine) else torch.zeros((0, net.cfg.dim))
    gathered = distributed.gather_rows(local, [len(idx[q::w]) for q in range(w)])
    order = np.concatenate([np.arange(len(idx))[q::w] for q in range(w)])
    return gathered[torch.from_numpy(np.argsort(order))]


def _n_lists(similar: Any) -> int:
    """Rows of a similar-clip structure (see :func:`_similar_matrix`)."""
    if sp.issparse(similar):
        return int(similar.shape[0])
    if hasattr(similar, "indptr"):
        return len(similar.indptr) - 1
    return len(similar)


def _similar_matrix(similar: Any, n: int, self_loops: bool) -> sp.csr_matrix:
    """Symmetric boolean CSR ``[n, n]`` of the similar clips (optionally with the diagonal).

    ``similar``: a sequence of index arrays (``similar[i]`` = clips similar to i), a scipy
    sparse matrix, or any CSR-like object with ``indptr`` and ``indices`` (e.g. sparse labels).
    """
    if sp.issparse(similar) or hasattr(similar, "indptr"):
        indptr = np.asarray(similar.indptr, dtype=np.int64)
        cols = np.asarray(similar.indices, dtype=np.int64)
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    else:
        lens = np.fromiter((len(s) for s in similar), dtype=np.int64, count=len(similar))
        rows = np.repeat(np.arange(len(similar)), lens)
        cols = (
            np.concatenate([np.asarray(s, dtype=np.int64).ravel() for s in similar])
            if lens.sum()
            else np.zeros(0, np.int64)
        )
    if len(cols) and (cols.min() < 0 or cols.max() >= n):
        raise DatasetError("similarity labels", [f"clip index out of range 0..{n - 1}"])
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    m = sp.coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n)).tocsr()
    m = (m + m.T).astype(bool)
    if self_loops:
        m = (m + sp.identity(n, dtype=bool, format="csr")).astype(bool)
    m = m.tocsr()
    m.sort_indices()
    return m


def _batch_similar(s: sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """``[B, B]`` bool similarity of the clips ``idx`` (distinct clips)."""
    return s[idx][:, idx].toarray().astype(bool)


def _batches(s: sp.csr_matrix, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of batches: B/2 shuffled anchors + one random similar clip of each (deduped)."""
    n = s.shape[0]
    counts = np.diff(s.indptr)
    order = rng.permutation(n)
    half = batch_size // 2
    for start in range(0, n, half):
        anchors = order[start : start + half]
        a = anchors[counts[anchors] > 0]
        pick = (rng.random(len(a)) * counts[a]).astype(np.int64)
        partners = s.indices[s.indptr[a] + pick]
        idx = np.unique(np.concatenate([anchors, partners]))
        if len(idx) >= 2 and len(a):
            yield idx


def _validate(
    net: EmbedNet, frames: np.ndarray, s: sp.csr_matrix, cfg: RetrieverConfig
) -> tuple[float, float]:
    """(val triplet loss on batches drawn with a fixed seed, val precision@1), eval mode."""
    net.eval()
    emb = embed(net, frames)
    rng = np.random.default_rng(VAL_SEED)
    gen = torch.Generator().manual_seed(VAL_SEED)
    total, count = 0.0, 0
    e = torch.from_numpy(emb)
    for idx in _batches(s, cfg.batch_size, rng):
        loss, st = triplet_loss(e[idx], torch.from_numpy(_batch_similar(s, idx)), cfg.margin, gen)
        total += float(loss) * st.anchors
        count += st.anchors
    return (total / count if count else math.nan), _precision_at_1(emb, s)
