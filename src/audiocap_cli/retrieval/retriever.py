"""The audio-based similar-caption retriever (Koizumi et al. 2020, section 3.2).

An ``EmbedNet`` maps a clip's encoder frames ``Φ`` (time-major ``[T, D_a]``) to one
L2-normalised vector ``e``; it is trained with a triplet loss so that clips whose captions are
similar (labels from ``similarity.py``) lie close together. At captioning time the K nearest
training clips in that space (``index.py``) supply the guidance captions.

This module knows nothing about hnswlib or audio: frames arrive as arrays (the caller reads
them from the feature cache) and embeddings leave as arrays.
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
from safetensors.torch import load_file
from torch import nn

from ..config import check_config, file_sha256, load_config, save_config
from ..errors import AudiocapError, ConfigMismatchError, DatasetError, ModelNotFoundError
from ..scale import distributed
from ..training.rundir import RunDir, RunState
from ..vectors import l2_normalize

CONFIG_NAME = "retriever.json"  # the RetrieverConfig beside best.safetensors
WEIGHTS_NAME = "best.safetensors"

# Paper 3.2: weights of the Embed network start from N(0, 0.02^2) (the BERT/GPT-2 convention).
INIT_STD = 0.02
# Validation batches are drawn with this seed every epoch, so val losses are comparable.
VAL_SEED = 1234
# Rows of the query block in the exact nearest-neighbour search of precision_at_1:
# 1024 x N float32 stays ~200 MB at N = 50k.
_P1_BLOCK = 1024


@dataclass(frozen=True)
class RetrieverConfig:
    """Shape and training hyper-parameters of the Embed network.

    ``d_proj``: YAMNet frames are 1024-dim; the paper's D_a is VGGish's 128, and flattening
    20 x 1024 would make ~20k-dim embeddings (~4 GB of float32 index at 50k clips), so frames
    are first projected to 128: E = frames x d_proj = 20 x 128 = 2560 dims, ~0.5 GB at 50k clips
    (50_000 * 2560 * 4 B = 512 MB, plus ~13 MB of HNSW links at M = 32).
    """

    encoder: str = "yamnet"
    encoder_fingerprint: str = ""  # EncoderConfig fingerprint of the frames it was trained on
    d_a: int = 1024  # frame dim: 1024 yamnet, 128 vggish
    frames: int = 20  # T: 10 s of YAMNet at its 0.48 s hop gives 20 frames
    d_proj: int = 128
    heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.3
    margin: float = 0.3  # on squared L2 distances of unit vectors (range 0..4)
    lr: float = 1e-4  # AdaBound's initial (Adam-like) step size
    final_lr: float = 0.1  # AdaBound's final (SGD-like) step size
    batch_size: int = 128
    select_by: str = "loss"  # best epoch by "loss" (val triplet loss) or "p_at_1" (val precision@1)

    def __post_init__(self) -> None:
        if self.d_proj % self.heads:
            raise AudiocapError(
                f"retriever: d_proj={self.d_proj} is not divisible by heads={self.heads}"
            )
        if min(self.d_a, self.frames, self.d_proj, self.ff_dim) < 1 or self.batch_size < 4:
            raise AudiocapError(
                "retriever: d_a, frames, d_proj, ff_dim must be >= 1 and batch_size >= 4"
            )
        if self.select_by not in ("loss", "p_at_1"):
            raise AudiocapError(
                f"retriever: select_by must be 'loss' or 'p_at_1', not {self.select_by!r}"
            )

    @property
    def dim(self) -> int:
        """E, the embedding dimension (frames * d_proj)."""
        return self.frames * self.d_proj


class FastDropout(nn.Module):
    """``nn.Dropout`` drawn from ``torch.rand`` (uniform) instead of ``bernoulli_``: the same
    distribution, but ~3x faster on CPU (measured 0.06 s vs 0.02 s on [128, 20, 512]), and
    dropout was the largest cost of a training step. No parameters, so weights are unchanged."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


class EmbedNet(nn.Module):
    """``Embed(Φ)``: frames ``[B, T, D_a]`` -> unit embeddings ``[B, T*d_proj]``.

    Linear(D_a -> d_proj) (identity when equal) -> Dropout -> one Transformer encoder layer
    (multi-head self-attention + feed-forward, post-LN as in the paper's era) -> flatten ->
    L2 normalise.

    Positional information: attention itself is permutation-equivariant and no positional
    encoding is added (the paper adds none), but flattening puts frame t in slots
    ``[t*d_proj, (t+1)*d_proj)`` of ``e``, so the embedding is order-sensitive: the same sound
    at another time is a different (but, after training, nearby) point.
    """

    def __init__(self, cfg: RetrieverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj: nn.Module = (
            nn.Linear(cfg.d_a, cfg.d_proj) if cfg.d_a != cfg.d_proj else nn.Identity()
        )
        self.drop = FastDropout(cfg.dropout)
        self.layer = nn.TransformerEncoderLayer(
            d_model=cfg.d_proj,
            nhead=cfg.heads,
            dim_feedforward=cfg.ff_dim,
            dropout=cfg.dropout,
            batch_first=True,
        )
        # The layer's residual/FF dropouts (attention-probability dropout stays inside MHA).
        self.layer.dropout = FastDropout(cfg.dropout)
        self.layer.dropout1 = FastDropout(cfg.dropout)
        self.layer.dropout2 = FastDropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for weight matrices, zero biases, LayerNorm gain 1 / bias 0."""
        norms = {
            id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
        }
        for name, p in self.named_parameters():
            if id(p) in norms:
                continue
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, INIT_STD)
            else:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames ``[B, T, D_a]`` float32 -> ``[B, E]`` with unit L2 norm."""
        x = self.drop(self.proj(frames))  # [B, T, d_proj]
        x = self.layer(x)  # [B, T, d_proj]
        return F.normalize(x.flatten(1), dim=1)  # [B, T*d_proj]


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


def mean_pool(frames: np.ndarray) -> np.ndarray:
    """The paper's 1NN baseline embedding: frames ``[N, T, D]`` -> time mean ``[N, D]``,
    L2-normalised, float32."""
    return l2_normalize(np.asarray(frames, dtype=np.float32).mean(axis=1))


def embed(net: EmbedNet, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Embed frames ``[N, T, D_a]`` (any float dtype) -> ``[N, E]`` float32, in eval mode."""
    _check_frames(frames, net.cfg, "frames")
    was_training = net.training
    net.eval()
    out = np.empty((len(frames), net.cfg.dim), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[s : s + batch_size], dtype=np.float32))
            out[s : s + len(x)] = net(x).numpy()
    net.train(was_training)
    return out


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


def retriever_id(run_dir: str | Path) -> str:
    """``"retriever:<sha256[:16] of best.safetensors>"``: the ``embedder`` an index built with
    this retriever records, so an index is never queried with other weights."""
    path = Path(run_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{run_dir}: no trained retriever ({WEIGHTS_NAME} missing)")
    return f"retriever:{file_sha256(path)[:16]}"


def load_retriever(
    run_dir: str | Path, expected_encoder_fingerprint: str | None = None
) -> EmbedNet:
    """Load ``best.safetensors`` + ``retriever.json`` from a run dir, in eval mode.

    Raises ModelNotFoundError when missing and ConfigMismatchError when the retriever was
    trained on another encoder's frames than ``expected_encoder_fingerprint``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_NAME).is_file():
        raise ModelNotFoundError(
            f"{run_dir}: no trained retriever ({WEIGHTS_NAME} missing; run `audiocap train-retriever`)"
        )
    cfg = load_config(RetrieverConfig, run_dir / CONFIG_NAME)
    if (
        expected_encoder_fingerprint is not None
        and cfg.encoder_fingerprint != expected_encoder_fingerprint
    ):
        raise ConfigMismatchError(
            f"retriever {run_dir} was trained on {cfg.encoder} features with fingerprint "
            f"{cfg.encoder_fingerprint!r}, but the features in use have {expected_encoder_fingerprint!r}; "
            "retrain it or use the matching encoder"
        )
    net = EmbedNet(cfg)
    try:
        net.load_state_dict(load_file(str(run_dir / WEIGHTS_NAME)))
    except (RuntimeError, OSError) as e:
        raise ConfigMismatchError(
            f"retriever {run_dir}: weights do not fit {CONFIG_NAME} ({str(e).splitlines()[0]})"
        ) from e
    return net.eval()


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
    _check_frames(train_frames, cfg, "training frames")
    _check_frames(val_frames, cfg, "validation frames")
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


# ---------------------------------------------------------------------------------------------


def _check_frames(frames: np.ndarray, cfg: RetrieverConfig, what: str) -> None:
    shape = tuple(getattr(frames, "shape", ()))
    if len(shape) != 3 or shape[1:] != (cfg.frames, cfg.d_a):
        raise ConfigMismatchError(
            f"{what} have shape {list(shape)}, but the retriever expects [N, {cfg.frames}, {cfg.d_a}] "
            f"({cfg.encoder} frames of one fixed-length clip)"
        )


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
