"""Training of the guided decoder (``generation/decoder.py``) by teacher forcing.

Examples are (target caption, guidance pool, audio frames or None); each epoch draws K pool
captions per target at random. The frozen LM features of every target (and, with
``guidance="separate"``, of every pool caption) are computed once and cached, so a step costs
only the fusion layers and the head. Under torchrun every rank takes a slice of each batch and
the gradients are summed (``scale/distributed.py``); rank 0 alone writes the run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_config, load_config, save_config
from ..errors import DatasetError
from ..generation.decoder import (
    DECODER_WEIGHTS,
    DecoderConfig,
    GuidedDecoder,
    TextFeatureCache,
    check_lm,
    pad_frames,
    pad_stack,
)
from ..generation.lm import FrozenLM
from ..pipeline.modeldir import DECODER_CONFIG
from ..scale import distributed
from .rundir import RunDir, RunState

TRAIN_CONFIG = "decoder_train.json"


@dataclass(frozen=True)
class DecoderTrainConfig:
    """Optimisation of :func:`train_decoder` (paper, sec. 4.1)."""

    batch_size: int = 512
    micro_batch: int = 32  # gradient accumulation: SmolLM2 logits of 32 x 31 x 49152 are ~200 MB
    lr_max: float = 1e-4
    lr_min: float = 1e-6
    period_epochs: float = 20.0  # cosine annealing with warm restarts every 20 epochs
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0


# (target caption, guidance pool, audio frames ``[T, D_a]`` or None)
Example = tuple[str, Sequence[str], "np.ndarray | None"]


def lr_at(epoch: float, tcfg: DecoderTrainConfig) -> float:
    """Cosine annealing with warm restarts, at a fractional epoch (SGDR, Loshchilov & Hutter)."""
    phase = (epoch % tcfg.period_epochs) / tcfg.period_epochs
    return tcfg.lr_min + 0.5 * (tcfg.lr_max - tcfg.lr_min) * (1.0 + math.cos(math.pi * phase))


def draw_guidance(pool: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """K captions drawn at random without replacement, in random order.

    A pool with fewer than K captions yields all of them (shuffled): the decoder then sees
    fewer guidance captions, which the pad mask handles; nothing is repeated to fill K.
    """
    n = len(pool)
    return [pool[i] for i in rng.permutation(n)[: min(k, n)]]


def _check_examples(examples: Sequence[Example], cfg: DecoderConfig, what: str) -> None:
    problems = []
    for i, (target, pool, frames) in enumerate(examples):
        if not isinstance(target, str) or not target.strip():
            problems.append(f"example {i}: empty target caption")
        if cfg.use_audio:
            if frames is None:
                problems.append(f"example {i}: no audio frames but use_audio=True")
            elif np.ndim(frames) != 2 or np.shape(frames)[1] != cfg.d_a or np.shape(frames)[0] == 0:
                problems.append(
                    f"example {i}: frames of shape {np.shape(frames)}, expected [T, {cfg.d_a}]"
                )
    if problems:
        raise DatasetError(what, problems)


class _Batcher:
    """Turns examples into teacher-forcing tensors, with the frozen features cached by text."""

    def __init__(
        self, dec: GuidedDecoder, features: Callable[[str], torch.Tensor | None] | None = None
    ) -> None:
        self.dec = dec
        self.hyp_cache = TextFeatureCache(max_items=10**9)  # the training set's captions, all kept
        self.features = features

    def _hyp_seqs(self, caps: list[str]) -> list[list[int]]:
        return [[self.dec.lm.bos_id] + t for t in self.dec.hyp_tokens(caps)]

    def tensors(self, examples: Sequence[Example], guidance: list[list[str]]) -> dict[str, Any]:
        dec, lm = self.dec, self.dec.lm
        targets = [e[0] for e in examples]
        hyp, hyp_pad = pad_stack(self.hyp_cache.get_many(targets, self._hyp_seqs, lm))
        toks = dec.hyp_tokens(targets)
        gold = torch.full(hyp_pad.shape, -100, dtype=torch.long)  # -100: ignored by cross_entropy
        for i, t in enumerate(toks):
            gold[i, : len(t) + 1] = torch.as_tensor(t + [lm.eos_id])
        ref, ref_pad = dec.ref_features(guidance)
        frames = frames_pad = None
        if dec.cfg.use_audio:
            frames, frames_pad = pad_frames([e[2] for e in examples])  # type: ignore[misc]
        dev = dec.device
        return {
            "hyp": hyp.to(dev),
            "ref": ref,
            "ref_pad": ref_pad.to(dev),
            "gold": gold.to(dev),
            "frames": None if frames is None else frames.to(dev),
            "frames_pad": None if frames_pad is None else frames_pad.to(dev),
        }

    def warm(self, examples: Sequence[Example]) -> None:
        """Fill the target (and, in "separate" mode, guidance) caches before the first epoch."""
        lm = self.dec.lm
        targets = [e[0] for e in examples]
        pool = (
            list(dict.fromkeys(c for e in examples for c in e[1]))
            if self.dec.cfg.guidance == "separate"
            else []
        )
        if self.features is not None:  # hypotheses and separate guidance are both [bos] caption
            self.hyp_cache.put_many(targets, self.features)
            self.dec.ref_cache.max_items = max(self.dec.ref_cache.max_items, len(pool))
            self.dec.ref_cache.put_many(pool, self.features)
        self.hyp_cache.get_many(targets, self._hyp_seqs, lm)
        if pool:
            self.dec.ref_cache.max_items = max(self.dec.ref_cache.max_items, len(pool))
            self.dec.ref_cache.get_many(pool, self.dec._ref_seqs, lm)


def _loss(dec: GuidedDecoder, t: dict[str, Any], smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed token loss and token count of one micro-batch."""
    logits = dec(t["hyp"], t["ref"], t["ref_pad"], t["frames"], t["frames_pad"])
    loss = F.cross_entropy(
        logits.flatten(0, 1),
        dec.local_targets(t["gold"]).flatten(),
        ignore_index=-100,
        label_smoothing=smoothing,
        reduction="sum",
    )
    return loss, int((t["gold"] != -100).sum())


@torch.no_grad()
def _validate(
    dec: GuidedDecoder, batcher: _Batcher, examples: Sequence[Example], micro: int
) -> float:
    """Mean per-token NLL (no smoothing, no dropout) with the first K pool captions as guidance."""
    dec.eval()
    total, count = 0.0, 0
    examples = distributed.shard(examples)  # under torchrun: each rank a slice, summed below
    for s in range(0, len(examples), micro):
        chunk = examples[s : s + micro]
        t = batcher.tensors(chunk, [list(e[1])[: dec.cfg.k] for e in chunk])
        loss, n = _loss(dec, t, 0.0)
        total, count = total + float(loss), count + n
    total, count = distributed.all_sum(total, count)
    return total / max(count, 1)


def train_decoder(
    examples: Sequence[Example],
    cfg: DecoderConfig,
    lm: FrozenLM,
    run_dir: str | Path,
    epochs: int,
    batch_size: int = 512,
    micro_batch: int = 32,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    val_examples: Sequence[Example] | None = None,
    train_cfg: DecoderTrainConfig | None = None,
    keep_state: bool = False,
    vocab_ids: Sequence[int] | None = None,
    features: Callable[[str], torch.Tensor | None] | None = None,
) -> Path:
    """Train a :class:`GuidedDecoder` by teacher forcing; returns ``run_dir`` holding the best
    epoch's ``decoder.safetensors`` + ``decoder.json`` (load with :func:`load_decoder`).
    ``decoder.safetensors`` is the run's best-epoch file itself, written once per improvement.
    A finished run deletes its resumable state unless ``keep_state`` (see ``RunDir.finish``).

    ``examples``: (target caption, guidance pool, frames ``[T, D_a]`` or None). Each epoch
    draws K pool captions at random, in random order (see :func:`draw_guidance`).
    Best = lowest validation NLL, or lowest training loss without ``val_examples``.
    ``progress(n)`` is called with the number of examples just processed (under torchrun, by
    every rank, counting the whole global batch: an epoch adds up to ``len(examples)``).
    ``vocab_ids``: what a low-rank head predicts over; ``features(text)``: precomputed frozen-LM
    features of ``[bos] text`` (an ``lmfeatures.LMFeatureStore``), used before running the LM.
    """
    tcfg = train_cfg or DecoderTrainConfig(
        batch_size=batch_size, micro_batch=micro_batch, seed=seed
    )
    if not examples:
        raise DatasetError("decoder training", ["no training examples"])
    _check_examples(examples, cfg, "decoder training examples")
    if val_examples:
        _check_examples(val_examples, cfg, "decoder validation examples")
    run = RunDir(run_dir, best_name=DECODER_WEIGHTS)
    torch.manual_seed(tcfg.seed)  # the N(0, 0.02) init: a run is reproducible from its seed
    dec = GuidedDecoder(cfg, lm, vocab_ids)
    distributed.broadcast_params(dec)
    opt = torch.optim.Adam(dec.parameters(), lr=tcfg.lr_max, betas=tcfg.betas, eps=tcfg.eps)
    state = _start_run(run, dec, opt, tcfg, resume)
    batcher = _Batcher(dec, features)
    if progress is not None and state.epoch:  # a resumed run: its finished epochs count as done
        progress(len(examples) * min(state.epoch, epochs))
    if state.epoch < epochs:
        batcher.warm(list(examples) + list(val_examples or []))
    while state.epoch < epochs:
        t0 = time.perf_counter()
        train_loss = _train_epoch(dec, opt, batcher, examples, tcfg, state.epoch, progress)
        state.epoch += 1
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "train_loss": train_loss,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        metric = train_loss
        if val_examples:
            metric = row["val_nll"] = _validate(dec, batcher, val_examples, tcfg.micro_batch)
        weights = {k: v.detach().clone() for k, v in dec.state_dict().items()}
        _checkpoint(run, state, weights, opt, row, metric)
    if distributed.is_main():
        if (
            not run.best.is_file()
        ):  # no epoch improved (a NaN loss): the last weights are all there is
            run.save_best(dec.state_dict())
        run.finish(keep_state)
    distributed.barrier()
    return run.path


def _start_run(
    run: RunDir,
    dec: GuidedDecoder,
    opt: torch.optim.Optimizer,
    tcfg: DecoderTrainConfig,
    resume: bool,
) -> RunState:
    """Resume the run in ``run`` (same configs and LM) or start it over (rank 0 writes)."""
    cfg, lm = dec.cfg, dec.lm
    if not distributed.gather_object(bool(resume and run.can_resume()))[0]:  # rank 0 decides
        if distributed.is_main():
            run.reset()
            save_config(
                cfg, run.path / DECODER_CONFIG, lm_name=lm.name, lm_fingerprint=lm.fingerprint
            )
            save_config(tcfg, run.path / TRAIN_CONFIG)
        distributed.barrier()
        return RunState()
    check_config(
        cfg, load_config(DecoderConfig, run.path / DECODER_CONFIG), f"decoder run {run.path}"
    )
    check_config(
        tcfg, load_config(DecoderTrainConfig, run.path / TRAIN_CONFIG), f"decoder run {run.path}"
    )
    check_lm(run.path, lm)
    weights, optim, state = run.resume()
    dec.load_state_dict(weights)
    opt.load_state_dict(optim["adam"])
    if distributed.is_main():
        run.trim_metrics(state.epoch)
    distributed.barrier()
    return state


def _checkpoint(
    run: RunDir,
    state: RunState,
    weights: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    row: dict[str, Any],
    metric: float,
) -> None:
    """After an epoch, on rank 0: keep the best ``weights`` (a copy of this epoch's), log
    ``row``, save the resumable state."""
    if not distributed.is_main():
        return
    row["best"] = run.update_best(state, metric, weights)
    run.log(row)
    run.save(weights, {"adam": opt.state_dict()}, state)


def _step_batch(
    dec: GuidedDecoder, examples: Sequence[Example], idx: np.ndarray, rng: np.random.Generator
) -> tuple[list[Example], list[list[str]], int]:
    """One step's examples and drawn guidance, sorted by target length (micro-batches then carry
    little padding; the sum is unchanged), and the step's target token count."""
    batch = [examples[i] for i in idx]
    guidance = [draw_guidance(list(e[1]), dec.cfg.k, rng) for e in batch]
    lens = [len(e[0]) for e in batch]
    srt = sorted(range(len(batch)), key=lens.__getitem__)
    batch, guidance = [batch[i] for i in srt], [guidance[i] for i in srt]
    n_tok = sum(len(t) + 1 for t in dec.hyp_tokens([e[0] for e in batch]))
    return batch, guidance, n_tok


def _train_epoch(
    dec: GuidedDecoder,
    opt: torch.optim.Optimizer,
    batcher: _Batcher,
    examples: Sequence[Example],
    tcfg: DecoderTrainConfig,
    epoch: int,
    progress: Callable[[int], None] | None,
) -> float:
    """One epoch of optimiser steps; returns the mean per-token training loss.

    Every step's summed token loss is divided by the step's global token count, so the
    gradient is the mean over the whole batch's tokens however it is split: into micro-batches
    here and, under torchrun, between ranks (each takes an interleaved slice of the sorted
    batch; the ranks' gradients are summed)."""
    n, bs = len(examples), tcfg.batch_size
    steps = max(1, math.ceil(n / bs))
    # per-epoch generators: a resumed run draws exactly what an uninterrupted one would; every
    # rank draws the same batches and guidance, and its own dropout masks
    rng = np.random.default_rng([tcfg.seed, epoch])
    torch.manual_seed(tcfg.seed * 100_003 + epoch + 7919 * distributed.rank())
    dec.train()
    order = rng.permutation(n)
    total, count = 0.0, 0
    for step in range(steps):
        batch, guidance, n_tok = _step_batch(dec, examples, order[step * bs : (step + 1) * bs], rng)
        n_step = len(batch)  # the global batch: the ranks' slices differ by up to one example
        batch, guidance = list(distributed.shard(batch)), list(distributed.shard(guidance))
        for lr_group in opt.param_groups:
            lr_group["lr"] = lr_at(epoch + step / steps, tcfg)
        opt.zero_grad(set_to_none=True)
        reported = 0  # progress counts the global batch, in proportion to this rank's share
        for s in range(0, len(batch), tcfg.micro_batch):
            t = batcher.tensors(batch[s : s + tcfg.micro_batch], guidance[s : s + tcfg.micro_batch])
            loss, k = _loss(dec, t, dec.cfg.label_smoothing)
            (loss / n_tok).backward()
            total, count = total + float(loss.detach()), count + k
            if progress is not None:
                done = n_step * min(s + tcfg.micro_batch, len(batch)) // len(batch)
                progress(done - reported)
                reported = done
        if progress is not None and reported < n_step:  # a rank with an empty slice
            progress(n_step - reported)
        distributed.all_reduce_grads(list(dec.parameters()))
        opt.step()
    total, count = distributed.all_sum(total, count)
    return total / max(count, 1)
