"""The guided caption generator of Koizumi et al. (2020), equations 9-13 (its training loop is
``training/decoder.py``).

    Ψ_ref = LM(w_ref)                       [B, L_r, D_l]  frozen features of the K guidance captions
    Ψ_hyp = LM(w_hyp)                       [B, L_h, D_l]  frozen features of the caption so far
    Ψ     = Dropout(MHA(Ψ_hyp, Ψ_ref, Ψ_ref))              (9)
    Ψ'    = Linear(Ψ)                       [B, L_h, D_r]  (10)
    Φ'    = Linear(Φ)                       [B, T, D_r]    (11)  Φ: audio frames [B, T, D_a]
    Υ     = Linear(Dropout(MHA(Ψ', Φ', Φ')))  [B, L_h, D_l]  (12)
    p     = softmax(LMHead(Ψ + Υ))          [B, L_h, V]    (13)  pretrained head, copied, trainable

The LM is frozen, so its features never need gradients: training caches Ψ_hyp of every
target caption (teacher forcing input is fixed) and, with ``guidance="separate"``, Ψ_ref of every
guidance caption, so that a step costs only the small fusion layers and the LM head.

Guidance token layout (``w_ref``):
  ``concat``   one LM pass over ``[bos] c1 [eos] c2 [eos] ... cK`` (the paper: the K captions are
               read as one sequence, so later captions see earlier ones);
  ``separate`` one LM pass per caption ``[bos] ci``, feature sequences concatenated. Each caption's
               features then depend on that caption alone and can be cached or precomputed for
               every caption of an index.
Hypotheses are ``[bos] w1 ... wn`` and the target is ``w1 ... wn [eos]``.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..config import atomic_save_safetensors, check_config, load_config, save_config
from ..errors import AudiocapError, ConfigMismatchError, ModelNotFoundError
from ..pipeline.modeldir import DECODER_CONFIG
from .lm import FrozenLM, load_lm, pad_ids

# The paper's settings (Koizumi et al. 2020, sec. 4.1): D_r = 60, dropout 0.3, K = 5 guidance
# captions, label smoothing 0.1, 4 attention heads. 4 heads divide D_r = 60 (15 per head) and
# every D_l in use (GPT-2 768 -> 192, SmolLM2 576 -> 144, tiny-gpt2 64 -> 16), so one ``heads``
# serves both attentions.
PAPER_D_R = 60
PAPER_HEADS = 4
# Trainable layers start from N(0, 0.02), GPT-2's initialiser, so the fused features start at the
# scale of the frozen LM's own.
INIT_STD = 0.02
DECODER_WEIGHTS = "decoder.safetensors"
HEADS = ("full", "lowrank")


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and regularisation of the guided decoder (the frozen LM is named by ``lm``)."""

    lm: str = "smollm2"
    d_l: int = 576  # LM feature size: SmolLM2-135M 576, GPT-2 768
    d_a: int = 1024  # audio frame size: YAMNet 1024, VGGish 128
    d_r: int = PAPER_D_R
    heads: int = PAPER_HEADS
    dropout: float = 0.3
    k: int = 5  # guidance captions per clip
    guidance: str = "concat"  # "concat" | "separate"
    use_audio: bool = True
    max_len: int = 30  # tokens per caption (targets and each guidance caption are truncated)
    label_smoothing: float = 0.1
    # Not in the paper: also add Ψ_hyp itself before the head (logits = head(Ψ_hyp + Ψ + Υ)), so
    # the decoder starts from the frozen LM's own next-token prediction instead of learning it
    # through the attention over the guidance. Much faster to train on a CPU budget.
    residual: bool = False
    # eq. 13's head. "full": the pretrained head copied and trained (the paper; 28M parameters
    # for SmolLM2's 49,152 x 576). "lowrank": logits only over the tokens the training captions
    # use (``vocab_ids``, ~5k for AudioCaps), from the FROZEN pretrained rows plus a trained
    # rank-``head_rank`` update and bias: ~0.2M trained parameters, and a 9x cheaper softmax.
    head: str = "full"
    head_rank: int = 32

    def __post_init__(self) -> None:
        problems = []
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, not {self.head!r}")
        if self.head_rank < 1:
            problems.append("head_rank must be >= 1")
        if self.guidance not in ("concat", "separate"):
            problems.append(f"guidance must be 'concat' or 'separate', not {self.guidance!r}")
        if self.heads < 1 or self.d_l % self.heads or self.d_r % self.heads:
            problems.append(f"heads={self.heads} must divide d_l={self.d_l} and d_r={self.d_r}")
        if self.k < 1 or self.max_len < 1 or self.d_a < 1 or self.d_r < 1:
            problems.append("k, max_len, d_a and d_r must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            problems.append("dropout and label_smoothing must be in [0, 1)")
        if problems:
            raise AudiocapError("decoder config: " + "; ".join(problems))


class CrossAttention(nn.Module):
    """Multi-head attention whose key/value projections can be computed once per clip.

    nn.MultiheadAttention would re-project the memory at every decoding step; here
    :meth:`memory` projects it once and :meth:`attend` reuses it for every query.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, D]`` -> keys, values ``[B, H, L, D/H]``."""
        b, n, d = mem.shape
        k = self.k(mem).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        v = self.v(mem).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        return k, v

    def attend(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], pad: torch.Tensor | None
    ) -> torch.Tensor:
        """Queries ``[B, Q, D]`` over memory ``kv`` with ``pad`` ``[B, L]`` (True = padding)."""
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        mask = None if pad is None else (~pad)[:, None, None, :]  # True = may attend
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


@dataclass
class Context:
    """Everything the fusion needs about a batch of clips, computed once per clip.

    ``ref_kv``/``audio_kv`` are ``[B, H, L, d]`` keys and values; pads are ``[B, L]`` True = pad.
    """

    ref_kv: tuple[torch.Tensor, torch.Tensor]
    ref_pad: torch.Tensor | None
    audio_kv: tuple[torch.Tensor, torch.Tensor] | None
    audio_pad: torch.Tensor | None

    def select(self, idx: torch.Tensor) -> Context:
        """The context of clips ``idx`` (drops finished clips during beam search)."""
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return Context(
            ref_kv=(self.ref_kv[0].index_select(0, idx), self.ref_kv[1].index_select(0, idx)),
            ref_pad=pick(self.ref_pad),
            audio_kv=None
            if self.audio_kv is None
            else (self.audio_kv[0].index_select(0, idx), self.audio_kv[1].index_select(0, idx)),
            audio_pad=pick(self.audio_pad),
        )

    @property
    def clips(self) -> int:
        return self.ref_kv[0].shape[0]


class TextFeatureCache:
    """Frozen LM features ``[L, D_l]`` per text, least recently used evicted beyond ``max_items``.

    Stored as float16: half the memory (SmolLM2: ~16 KB per 14-token caption) for a rounding
    of ~5e-4 relative, far below the decoder's dropout noise.
    """

    def __init__(self, max_items: int = 200_000, dtype: torch.dtype = torch.float16) -> None:
        self.max_items = max_items
        self.dtype = dtype
        self._items: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, keys: Sequence[Any], features: Callable[[Any], torch.Tensor | None]) -> None:
        """Store precomputed features (``features(key)`` ``[L, D_l]``, or None when unknown)."""
        for key in keys:
            if key not in self._items:
                f = features(key)
                if f is not None:
                    self._items[key] = f.to(self.dtype)

    def get_many(
        self, keys: Sequence[Any], seqs: Callable[[list[Any]], list[list[int]]], lm: FrozenLM
    ) -> list[torch.Tensor]:
        """Features of ``keys`` (float32); misses are tokenized by ``seqs`` and run through ``lm``."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._items))
        if missing:
            for key, feats in zip(missing, lm.features_of(seqs(missing))):
                self._items[key] = feats.to(self.dtype)
        out = []
        for key in keys:
            self._items.move_to_end(key)
            out.append(self._items[key].float())
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return out


def pad_stack(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``[L_i, D]`` -> ``[B, L_max, D]`` and pad mask ``[B, L_max]`` (True = padding)."""
    n = max(1, max(f.shape[0] for f in feats))
    out = feats[0].new_zeros((len(feats), n, feats[0].shape[1]))
    pad = torch.ones((len(feats), n), dtype=torch.bool)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        pad[i, : f.shape[0]] = False
    return out, pad


def pad_frames(frames: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[T_i, D_a]`` per clip -> ``[B, T_max, D_a]`` and pad mask ``[B, T_max]``."""
    return pad_stack([torch.as_tensor(f, dtype=torch.float32).cpu() for f in frames])


class GuidedDecoder(nn.Module):
    """Fusion of guidance-caption LM features, hypothesis LM features and audio frames.

    Only the fusion layers and the copied LM head are parameters of this module; the frozen LM
    is held as a plain attribute, so ``state_dict()`` is exactly what gets saved.
    """

    def __init__(
        self,
        cfg: DecoderConfig,
        lm: FrozenLM,
        vocab_ids: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if lm.dim != cfg.d_l:
            raise ConfigMismatchError(
                f"decoder config says d_l={cfg.d_l} but {lm.name} has {lm.dim}"
            )
        self.cfg = cfg
        self.lm = lm
        self.ref_attn = CrossAttention(cfg.d_l, cfg.heads)  # eq. 9
        self.drop = nn.Dropout(cfg.dropout)
        self.hyp_proj = nn.Linear(cfg.d_l, cfg.d_r)  # eq. 10
        self.audio_proj = nn.Linear(cfg.d_a, cfg.d_r)  # eq. 11
        self.audio_attn = CrossAttention(cfg.d_r, cfg.heads)  # eq. 12
        self.audio_out = nn.Linear(cfg.d_r, cfg.d_l)
        self.apply(_init)
        self._init_head(cfg, lm, vocab_ids)
        self.ref_cache = TextFeatureCache()  # "separate" guidance: features per caption
        self.to(lm.device)

    def _init_head(
        self, cfg: DecoderConfig, lm: FrozenLM, vocab_ids: Sequence[int] | torch.Tensor | None
    ) -> None:
        if cfg.head == "full":
            self.vocab_ids: torch.Tensor | None = None
            # eq. 13: the pretrained head, cloned so training it leaves the frozen embeddings alone
            self.head = nn.Parameter(lm.lm_head_weight.detach().clone())
            self.head_bias = (
                None if lm.lm_head_bias is None else nn.Parameter(lm.lm_head_bias.detach().clone())
            )
            return
        if vocab_ids is None:
            raise AudiocapError("a low-rank head needs the vocabulary (token ids) it predicts over")
        ids = torch.as_tensor(vocab_ids, dtype=torch.long).unique()  # sorted, no repeats
        if lm.eos_id not in set(ids.tolist()):
            ids = torch.cat([ids, torch.tensor([lm.eos_id])]).unique()
        self.register_buffer("vocab_ids", ids)  # saved: the head's vocabulary is part of it
        rows = lm.lm_head_weight.detach()[ids.to(lm.lm_head_weight.device)].clone()
        self.register_buffer("head_rows", rows, persistent=False)  # frozen, from the LM wheel
        self.head_a = nn.Parameter(torch.randn(cfg.d_l, cfg.head_rank) * INIT_STD)
        self.head_b = nn.Parameter(
            torch.zeros(len(ids), cfg.head_rank)
        )  # starts as the frozen head
        self.head_bias = nn.Parameter(torch.zeros(len(ids)))
        # token id -> row of the restricted head (-100: outside the vocabulary, ignored by the loss)
        local = torch.full((lm.vocab_size,), -100, dtype=torch.long)
        local[ids] = torch.arange(len(ids))
        self.register_buffer("local_ids", local, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.hyp_proj.weight.device

    def logits(self, x: torch.Tensor, full: bool = True) -> torch.Tensor:
        """Head of eq. 13 on ``x [B, Q, D_l]``: ``[B, Q, V]`` (``full``, -inf outside a restricted
        vocabulary, for decoding) or ``[B, Q, V']`` over the restricted vocabulary (training)."""
        if self.vocab_ids is None:
            return F.linear(x, self.head, self.head_bias)
        z = F.linear(x, self.head_rows, self.head_bias) + (x @ self.head_a) @ self.head_b.T
        if not full:
            return z
        out = z.new_full((*z.shape[:-1], self.lm.vocab_size), -torch.inf)
        out[..., self.vocab_ids] = z
        return out

    def local_targets(self, gold: torch.Tensor) -> torch.Tensor:
        """Token ids ``[...]`` -> rows of :meth:`logits` (``full=False``); -100 stays -100."""
        if self.vocab_ids is None:
            return gold
        return torch.where(gold < 0, gold, self.local_ids[gold.clamp(min=0)])

    # ---- token layout ---------------------------------------------------------------------
    def hyp_tokens(self, captions: Sequence[str]) -> list[list[int]]:
        """Caption tokens, truncated to ``max_len`` (no bos/eos)."""
        return self.lm.tokenize(list(captions), self.cfg.max_len)

    def _ref_seqs(self, captions: list[str]) -> list[list[int]]:
        return [[self.lm.bos_id] + t for t in self.lm.tokenize(captions, self.cfg.max_len)]

    # ---- frozen features ------------------------------------------------------------------
    def ref_features(self, guidance: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ψ_ref ``[B, L_r, D_l]`` and its pad mask ``[B, L_r]`` of each clip's guidance captions.

        Uses at most ``k`` captions per clip (the first ``k``); an empty list reads as one
        empty caption (just ``[bos]``), so every clip has something to attend to.
        """
        guidance = [list(g)[: self.cfg.k] for g in guidance]
        if self.cfg.guidance == "separate":
            flat = [c for g in guidance for c in g]
            feats = self.ref_cache.get_many(flat, self._ref_seqs, self.lm)
            per_clip, i = [], 0
            for g in guidance:
                per_clip.append(torch.cat(feats[i : i + len(g)]) if g else self._empty_ref())
                i += len(g)
            ref, pad = pad_stack(per_clip)
            return ref.to(self.lm.device), pad.to(self.lm.device)
        seqs = []
        for g in guidance:
            toks = self.lm.tokenize(g, self.cfg.max_len) if g else []
            seq = [self.lm.bos_id]
            for j, t in enumerate(toks):
                seq += ([self.lm.eos_id] if j else []) + t
            seqs.append(seq)
        ids, mask = pad_ids(seqs, self.lm.pad_id)
        return self.lm.features(ids, mask.long().to(self.lm.device)), ~mask.to(self.lm.device)

    def _empty_ref(self) -> torch.Tensor:
        """Features ``[1, D_l]`` of a clip without guidance: the lone ``[bos]``."""
        return self.ref_cache.get_many([("", "<empty>")], lambda _: [[self.lm.bos_id]], self.lm)[0]

    # ---- fusion ----------------------------------------------------------------------------
    def context(
        self,
        ref: torch.Tensor,
        ref_pad: torch.Tensor | None,
        frames: torch.Tensor | None,
        frames_pad: torch.Tensor | None = None,
    ) -> Context:
        """Project the per-clip memories once: Ψ_ref ``[B, L_r, D_l]``, Φ ``[B, T, D_a]``."""
        audio_kv = None
        if self.cfg.use_audio:
            if frames is None:
                raise AudiocapError(
                    "this decoder uses audio (use_audio=True) but no frames were given"
                )
            if frames.shape[-1] != self.cfg.d_a:
                raise ConfigMismatchError(
                    f"audio frames have {frames.shape[-1]} dims but the decoder expects d_a={self.cfg.d_a}"
                )
            audio_kv = self.audio_attn.memory(
                self.audio_proj(frames.to(self.device, torch.float32))
            )
        return Context(
            self.ref_attn.memory(ref), ref_pad, audio_kv, frames_pad if self.cfg.use_audio else None
        )

    def fuse(self, hyp: torch.Tensor, ctx: Context, full: bool = True) -> torch.Tensor:
        """Ψ_hyp ``[B, Q, D_l]`` (Q hypothesis positions, or beams x 1 per clip) -> logits ``[B, Q, V]``."""
        psi = self.drop(self.ref_attn.attend(hyp, ctx.ref_kv, ctx.ref_pad))  # eq. 9
        x = psi
        if ctx.audio_kv is not None:
            a = self.audio_attn.attend(
                self.hyp_proj(psi), ctx.audio_kv, ctx.audio_pad
            )  # eqs. 10-12
            x = psi + self.audio_out(self.drop(a))
        if self.cfg.residual:
            x = x + hyp
        return self.logits(x, full)  # eq. 13

    def forward(
        self,
        hyp: torch.Tensor,
        ref: torch.Tensor,
        ref_pad: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
        frames_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits ``[B, L_h, V]`` (``[B, L_h, V']`` with a low-rank head) from Ψ_hyp ``[B, L_h, D_l]``, Ψ_ref, Φ."""
        return self.fuse(hyp, self.context(ref, ref_pad, frames, frames_pad), full=False)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``decoder.safetensors`` (trainable weights only) and ``decoder.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.state_dict(), folder / DECODER_WEIGHTS)
        save_config(
            self.cfg,
            folder / DECODER_CONFIG,
            lm_name=self.lm.name,
            lm_fingerprint=self.lm.fingerprint,
        )
        return folder


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, INIT_STD)
        nn.init.zeros_(m.bias)


def check_lm(folder: Path, lm: FrozenLM) -> None:
    import json

    meta = json.loads((folder / DECODER_CONFIG).read_text())
    if meta.get("lm_fingerprint") not in (None, lm.fingerprint):
        raise ConfigMismatchError(
            f"{folder}: decoder was trained on a different {meta.get('lm_name')!r} language model "
            f"(weights fingerprint {meta.get('lm_fingerprint')} != {lm.fingerprint})"
        )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a decoder's safetensors file; a damaged one is a one-line error naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelNotFoundError(
            f"{path}: damaged decoder weights ({first}); retrain or reinstall the model"
        ) from None


def load_decoder(
    folder: str | Path,
    lm: FrozenLM | None = None,
    expected: DecoderConfig | None = None,
    device: str | torch.device = "cpu",
) -> GuidedDecoder:
    """Load a decoder saved by :meth:`GuidedDecoder.save` (loads its LM unless ``lm`` is given)."""
    folder = Path(folder)
    cfg = load_config(DecoderConfig, folder / DECODER_CONFIG)
    if expected is not None:
        check_config(expected, cfg, f"decoder at {folder}")
    if not (folder / DECODER_WEIGHTS).is_file():
        raise ModelNotFoundError(f"{folder / DECODER_WEIGHTS}: decoder weights not found")
    weights = _read_weights(folder / DECODER_WEIGHTS)  # before the LM: a damaged file fails fast
    lm = lm if lm is not None else load_lm(cfg.lm, device)
    check_lm(folder, lm)
    if lm.device != torch.device("cpu"):
        weights = {k: v.to(lm.device) for k, v in weights.items()}
    dec = GuidedDecoder(cfg, lm, weights.get("vocab_ids"))
    dec.load_state_dict(weights)  # float16 (shipped) weights are cast to the float32 parameters
    return dec.eval()


def export_float16(src: str | Path, dst: str | Path) -> Path:
    """A decoder folder as a model ships it: ``decoder.json`` and the weights in float16 (half
    the bytes; :func:`load_decoder` casts them back to float32)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / DECODER_CONFIG, dst / DECODER_CONFIG)
    weights = load_file(str(src / DECODER_WEIGHTS))
    atomic_save_safetensors(
        {k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
        dst / DECODER_WEIGHTS,
    )
    return dst
