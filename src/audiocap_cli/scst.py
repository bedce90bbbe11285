"""Self-critical sequence training of a trained guided decoder (Rennie et al. 2017).

Teacher forcing (``decoder.train_decoder``) fits each next token of a human caption; it never
sees the decoder's own captions, nor the metric they are judged by. SCST fine-tunes the
trained decoder by policy gradient on CIDEr-D, the metric itself:

    for a batch of B clips, sample N captions each from the decoder (no dropout)     [B, N]
    r      = CIDEr-D of each sample against its clip's reference captions            [B, N]
    b      = mean reward of the clip's other N - 1 samples (Luo 2020: no greedy pass) [B, N]
    loss   = -mean((r - b) * sum_t log p(w_t | w_<t))                                 scalar

The frozen LM's features of a sampled prefix are those the sampling computed, so the gradient
pass costs only the fusion layers and the head (the fusion has no self-attention over the
hypothesis: its positions are independent queries).

The literature's AAC systems (e.g. Mei et al. 2021, Xu et al. 2021) add SCST after
cross-entropy training; Koizumi et al. (2020) do not, so it is an opt-in stage here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_config, load_config, save_config
from .decoder import DECODER_CONFIG, DECODER_WEIGHTS, Context, GuidedDecoder, pad_frames
from .decoding import unigram_fmean
from .errors import AudiocapError, ConfigMismatchError, DatasetError
from .training import RunDir, RunState
from .zeroshot import ciderd_agreement, reference_idf, words

SCST_CONFIG = "scst.json"

# A clip for SCST: (guidance captions, audio frames [T, D_a] or None, reference captions).
Clip = tuple[Sequence[str], "np.ndarray | None", Sequence[str]]


@dataclass(frozen=True)
class SCSTConfig:
    """Policy-gradient fine-tuning of a trained decoder."""

    samples: int = 5  # captions sampled per clip; each one's baseline is the mean of the others
    clips_per_step: int = 32
    steps: int = 300
    lr: float = 1e-5  # Adam; SCST fine-tunes, so ~1/10 of the cross-entropy run's peak (1e-4)
    # Samples at temperature 1 are 11-12 words of mostly noise (the beam says 7.6); learning to
    # avoid those taught the default decoder short, generic captions. At 0.5 the samples look
    # like the beam's, and the gradient ranks plausible captions.
    temperature: float = 0.5
    max_len: int = 30  # tokens per sampled caption, EOS included
    seed: int = 0
    save_every: int = 10  # steps between resumable checkpoints
    # reward = CIDEr-D + fmean_weight x METEOR's unigram F-mean (recall-weighted; mean over the
    # references). CIDEr-D alone barely charges for brevity (its length penalty is a Gaussian
    # of sigma 6 words), and measured alone it taught the default decoder 4.7-word captions.
    fmean_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise AudiocapError(
                "scst: samples must be >= 2 (each sample's baseline is the others' mean)"
            )
        if self.clips_per_step < 1 or self.steps < 0 or self.max_len < 1 or self.save_every < 1:
            raise AudiocapError(
                "scst: clips_per_step, max_len and save_every must be >= 1, steps >= 0"
            )
        if not self.lr > 0 or not self.temperature > 0 or self.fmean_weight < 0:
            raise AudiocapError("scst: lr and temperature must be > 0, fmean_weight >= 0")


# ---------------------------------------------------------------- reward


class CiderD:
    """CIDEr-D (pycocoevalcap's ``CiderScorer``, sigma 6, clipped, x10) with document
    frequencies fixed from a corpus of reference sets, as SCST needs: a reward must not depend
    on which other clips share the batch. Each reference set counts once per n-gram."""

    def __init__(self, corpus: Sequence[Sequence[str]]) -> None:
        self.idf = reference_idf(corpus)
        self.log_n = math.log(max(len(corpus), 1))  # the idf of an n-gram no reference set has

    def scores(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """CIDEr-D ``[H]`` of each of ``hyps`` against the same ``refs``."""
        return ciderd_agreement(hyps, refs, [1.0] * len(refs), self.idf, unseen=self.log_n)


class Reward:
    """SCST's reward: CIDEr-D + ``fmean_weight`` x the mean unigram F-mean over the references."""

    def __init__(self, cider: CiderD, fmean_weight: float) -> None:
        self.cider, self.fmean_weight = cider, fmean_weight

    def scores(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """``[H]`` rewards of ``hyps`` against the same ``refs``."""
        r = self.cider.scores(hyps, refs)
        if self.fmean_weight:
            r = r + self.fmean_weight * unigram_fmean(
                [words(h) for h in hyps], [words(x) for x in refs]
            ).mean(1)
        return r


# ---------------------------------------------------------------- sampling and log-probs


def _context(dec: GuidedDecoder, clips: Sequence[Clip]) -> Context:
    ref, ref_pad = dec.ref_features([c[0] for c in clips])
    frames = pad = None
    if dec.cfg.use_audio:
        frames, pad = pad_frames([c[1] for c in clips])  # type: ignore[misc]
        frames, pad = frames.to(dec.device), pad.to(dec.device)
    return dec.context(ref, ref_pad, frames, pad)


@torch.no_grad()
def sample(
    dec: GuidedDecoder,
    clips: Sequence[Clip],
    n: int,
    max_len: int,
    temperature: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` captions per clip drawn from the decoder (KV-cached frozen LM, like beam search):
    tokens ``[B*n, T]`` (EOS included, -100 after it), the LM features each token was predicted
    from ``[B*n, T, D_l]`` ([bos] w1 ... w_{T-1}) and lengths ``[B*n]`` (EOS included)."""
    lm = dec.lm
    ctx = _context(dec, clips)
    b = len(clips)
    banned = torch.as_tensor(sorted(set(lm.special_ids) - {lm.eos_id}), dtype=torch.long)
    tokens = torch.full((b, 1), lm.bos_id, dtype=torch.long)
    cache = None
    out, feats = [], []
    done = torch.zeros(b * n, dtype=torch.bool)
    lengths = torch.full((b * n,), max_len, dtype=torch.long)
    for t in range(max_len):
        h, cache = lm.step(tokens, cache)  # [rows, 1, D_l]
        if t == 0:
            cache.batch_repeat_interleave(n)
            h = h.repeat_interleave(n, dim=0)
        feats.append(h[:, 0].float().cpu())
        logits = dec.fuse(h.view(b, n, -1), ctx).view(b * n, -1).float().cpu() / temperature
        if len(banned):
            logits[:, banned] = -torch.inf
        if t == 0:  # no empty captions
            logits[:, lm.eos_id] = -torch.inf
        nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen).view(-1)
        nxt = torch.where(done, torch.full_like(nxt, -100), nxt)
        out.append(nxt)
        ended = (nxt == lm.eos_id) & ~done
        lengths[ended] = t + 1
        done |= ended
        if bool(done.all()):
            break
        tokens = nxt.clamp(min=0).where(~done, torch.full_like(nxt, lm.eos_id)).view(-1, 1)
    return torch.stack(out, 1), torch.stack(feats, 1), lengths


def sequence_logprob(
    dec: GuidedDecoder, clips: Sequence[Clip], tokens: torch.Tensor, feats: torch.Tensor
) -> torch.Tensor:
    """Summed log-prob ``[B*n]`` of sampled ``tokens`` ``[B*n, T]`` (-100 = none) given the LM
    features they were predicted from ``[B*n, T, D_l]``, with gradients through the decoder."""
    b = len(clips)
    n = tokens.shape[0] // b
    ctx = _context(dec, clips)
    x = feats.to(dec.device).view(b, n * feats.shape[1], -1)  # positions are independent queries
    logits = dec.fuse(x, ctx, full=False).view(b * n, feats.shape[1], -1)
    logp = F.log_softmax(logits.float(), dim=-1)
    gold = dec.local_targets(tokens.to(dec.device))
    picked = logp.gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (gold >= 0)).sum(1)


# ---------------------------------------------------------------- training


def _check_clips(clips: Sequence[Clip], dec: GuidedDecoder) -> None:
    problems = []
    for i, (_, frames, refs) in enumerate(clips):
        if not any(str(r).strip() for r in refs):
            problems.append(f"clip {i}: no reference caption")
        if dec.cfg.use_audio and (
            frames is None or np.ndim(frames) != 2 or np.shape(frames)[1] != dec.cfg.d_a
        ):
            problems.append(
                f"clip {i}: frames of shape {np.shape(frames)}, expected [T, {dec.cfg.d_a}]"
            )
    if problems:
        raise DatasetError("SCST clips", problems)


def step_clips(n_clips: int, cfg: SCSTConfig, step: int) -> np.ndarray:
    """The clips of ``step``: consecutive slices of a seeded permutation, a new one per pass."""
    per_pass = max(1, n_clips // cfg.clips_per_step)
    p, s = divmod(step, per_pass)
    order = np.random.default_rng([cfg.seed, p]).permutation(n_clips)
    return order[s * cfg.clips_per_step : (s + 1) * cfg.clips_per_step]


def train_scst(
    dec: GuidedDecoder,
    clips: Sequence[Clip],
    run_dir: str | Path,
    cfg: SCSTConfig = SCSTConfig(),
    cider: CiderD | None = None,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
    keep_state: bool = False,
) -> Path:
    """Fine-tune ``dec`` (in place) by SCST on ``clips`` for ``cfg.steps`` steps; the result is
    written to ``run_dir`` as ``decoder.safetensors`` + ``decoder.json`` (:func:`load_decoder`).
    Resumable: every ``save_every`` steps the weights, Adam's state and the step are saved, and
    a rerun with the same config continues where the last checkpoint left it (every step's
    clips and samples are seeded by the step, so a resumed run draws what an uninterrupted one
    would). ``cider``: CIDEr-D's document frequencies (default: the clips' references as corpus);
    the reward adds ``cfg.fmean_weight`` x the unigram F-mean (:class:`Reward`).
    ``progress(n)`` is called with the clips of each finished step. A finished run deletes its
    resumable state unless ``keep_state``."""
    if not clips:
        raise DatasetError("SCST", ["no clips"])
    _check_clips(clips, dec)
    reward_of = Reward(cider or CiderD([c[2] for c in clips]), cfg.fmean_weight)
    run = RunDir(run_dir, best_name=DECODER_WEIGHTS)
    opt = torch.optim.Adam(dec.parameters(), lr=cfg.lr)
    state = _start(run, dec, opt, cfg, resume)
    if progress is not None and state.epoch:  # a resumed run's progress starts where it was
        progress(min(state.epoch, cfg.steps) * cfg.clips_per_step)
    lm = dec.lm
    dec.eval()  # samples and their gradients come from the same (dropout-free) policy
    while state.epoch < cfg.steps:
        t0 = time.perf_counter()
        step = state.epoch
        batch = [clips[i] for i in step_clips(len(clips), cfg, step)]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        tokens, feats, _ = sample(dec, batch, cfg.samples, cfg.max_len, cfg.temperature, gen)
        texts = [
            lm.detokenize([t for t in row if t >= 0 and t != lm.eos_id]) for row in tokens.tolist()
        ]
        n = cfg.samples
        reward = np.concatenate(
            [reward_of.scores(texts[i * n : (i + 1) * n], batch[i][2]) for i in range(len(batch))]
        )
        r = reward.reshape(len(batch), n)
        advantage = torch.as_tensor(
            (r - (r.sum(1, keepdims=True) - r) / (n - 1)).reshape(-1), dtype=torch.float32
        )
        opt.zero_grad(set_to_none=True)
        logp = sequence_logprob(dec, batch, tokens, feats)
        loss = -(advantage.to(logp.device) * logp).mean()
        loss.backward()
        opt.step()
        state.epoch += 1
        row: dict[str, Any] = {
            "step": state.epoch,
            "reward": float(reward.mean()),
            "loss": float(loss.detach()),
            "words": float(np.mean([len(words(x)) for x in texts])),
            "seconds": time.perf_counter() - t0,
        }
        run.log(row)
        if state.epoch % cfg.save_every == 0 or state.epoch == cfg.steps:
            run.save(
                {k: v.detach().clone() for k, v in dec.state_dict().items()},
                {"adam": opt.state_dict()},
                state,
            )
        if progress is not None:
            progress(len(batch))
    run.save_best(dec.state_dict())
    save_config(dec.cfg, run.path / DECODER_CONFIG, lm_name=lm.name, lm_fingerprint=lm.fingerprint)
    run.finish(keep_state)
    return run.path


def _start(
    run: RunDir, dec: GuidedDecoder, opt: torch.optim.Optimizer, cfg: SCSTConfig, resume: bool
) -> RunState:
    """Resume the run in ``run`` (same config, same starting weights) or start it over from
    ``dec``'s weights."""
    start = weights_fingerprint(dec)
    if resume and run.can_resume() and (run.path / SCST_CONFIG).is_file():
        found = load_config(SCSTConfig, run.path / SCST_CONFIG)
        # a longer run extends a shorter one: every step's draws depend on the step alone
        check_config(
            cfg,
            found,
            f"SCST run {run.path}",
            fields=tuple(f for f in cfg.__dataclass_fields__ if f != "steps"),
        )
        if json.loads((run.path / SCST_CONFIG).read_text()).get("start") != start:
            raise ConfigMismatchError(
                f"SCST run {run.path} started from other decoder weights than these; "
                "delete its last.safetensors to start over"
            )
        weights, optim, state = run.resume()
        dec.load_state_dict(weights)
        opt.load_state_dict(optim["adam"])
        run.trim_metrics(state.epoch, key="step")  # RunState.epoch counts steps here
        return state
    run.reset()
    save_config(cfg, run.path / SCST_CONFIG, start=start)
    return RunState()


def weights_fingerprint(dec: GuidedDecoder) -> str:
    """sha256 (16 hex digits) of the decoder's trainable weights, in ``state_dict`` order."""
    h = hashlib.sha256()
    for name, t in dec.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
