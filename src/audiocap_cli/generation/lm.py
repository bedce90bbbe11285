"""Loading the frozen causal language model whose features the guided decoder reads.

Koizumi et al. (2020) use GPT-2 (117M, D_l = 768) frozen; the offline default here is
SmolLM2-135M-Instruct (D_l = 576), shipped as a 4-bit GGUF inside a PyPI wheel. transformers
dequantises the GGUF on every load (~25 s on a laptop CPU), so it is converted ONCE into
``cache_dir()/lm/<name>`` as a plain safetensors folder and loaded from there afterwards.

A :class:`FrozenLM` is split into
  ``body``            the transformer without its token head (final norm included), frozen, eval
  ``lm_head_weight``  ``[V, D_l]`` the pretrained token head (tied to the input embeddings in
                      both GPT-2 and SmolLM2); the decoder copies it into its own trainable
                      parameter, which unties it from the frozen embeddings.
Features are the body's last hidden state, i.e. exactly what the LM head sees.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelNotFoundError
from ..resources import cache_dir, shipped

# The tiny random GPT-2 for offline tests of the GPT-2 path: small enough to build in well under
# a second, big enough (2 heads, 2 layers) to exercise attention, caches and positions.
TINY_GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}
TINY_SEED = 0
# GPT-2 BPE vocabulary size (encoder.json has 50,257 entries; id 50256 is <|endoftext|>).
GPT2_VOCAB = 50257
# Rows of each weight sampled into the fingerprint: enough to tell checkpoints apart, while
# hashing stays ~ms instead of hashing the full 0.5 GB.
_FINGERPRINT_SAMPLES = 4096
SMOLLM2_SPEC = "smollm2"


@dataclass
class FrozenLM:
    """A frozen causal LM split into body and token head, with its tokenizer."""

    body: nn.Module
    lm_head_weight: torch.Tensor  # [V, D_l], frozen; may share storage with the input embeddings
    lm_head_bias: torch.Tensor | None  # [V] or None (GPT-2 and Llama have none)
    tokenizer: Any
    dim: int  # D_l
    name: str  # the spec it was loaded from
    bos_id: int  # starts every hypothesis and every guidance caption
    eos_id: int  # ends a caption; also separates guidance captions in "concat" mode
    pad_id: int  # fills padding (always masked, any valid id would do)
    special_ids: tuple[int, ...] = ()  # all special token ids (suppressed when decoding)
    _fingerprint: str | None = field(default=None, repr=False)
    _token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head_weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lm_head_weight.device

    @property
    def fingerprint(self) -> str:
        """A short hash of the frozen weights (sampled), config and tokenizer size."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = getattr(self.body, "config", None)
            h.update(str(getattr(cfg, "model_type", "")).encode())
            h.update(str(len(self.tokenizer)).encode())
            tensors = dict(self.body.state_dict())
            tensors["lm_head.weight"] = self.lm_head_weight
            if self.lm_head_bias is not None:
                tensors["lm_head.bias"] = self.lm_head_bias
            for key in sorted(tensors):
                t = tensors[key].detach().reshape(-1)
                step = max(1, t.numel() // _FINGERPRINT_SAMPLES)
                sample = t[::step][:_FINGERPRINT_SAMPLES].float().cpu().numpy()
                h.update(key.encode())
                h.update(str(tuple(tensors[key].shape)).encode())
                h.update(sample.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def tokenize(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Token ids of each text (no special tokens added), truncated to ``max_len``."""
        if not texts:
            return []
        ids = self.tokenizer([t.strip() for t in texts], add_special_tokens=False)["input_ids"]
        return [list(x[:max_len]) if max_len is not None else list(x) for x in ids]

    def detokenize(self, tokens: list[int]) -> str:
        """Text of ``tokens`` with special tokens removed."""
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()

    def token_texts(self, ids: Sequence[int] | None = None) -> dict[int, str]:
        """Token id -> its text on its own (a leading space where it begins a word; "" for
        special tokens), for ``ids`` (default: the whole vocabulary), for checks on the words a
        hypothesis spells. Cached: each id is decoded once (about 25 us a token)."""
        want = range(self.vocab_size) if ids is None else ids
        missing = [int(i) for i in want if int(i) not in self._token_texts]
        if missing:
            specials = set(self.special_ids)
            for i, text in zip(missing, self.tokenizer.batch_decode([[i] for i in missing])):
                self._token_texts[i] = "" if i in specials else str(text)
        return self._token_texts

    @torch.no_grad()
    def features(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last hidden state (after the final norm) ``[B, L, D_l]`` of ids ``[B, L]``.

        ``attention_mask`` ``[B, L]`` (1 = real token) for right-padded batches. no_grad, not
        inference_mode: the result feeds trainable layers whose backward saves it.
        """
        out = self.body(
            input_ids=ids.to(self.device), attention_mask=attention_mask, use_cache=False
        )
        return out.last_hidden_state

    @torch.no_grad()
    def step(self, ids: torch.Tensor, cache: Any | None) -> tuple[torch.Tensor, Any]:
        """Incremental features: ids ``[R, n]`` appended to ``cache`` -> ``([R, n, D_l], cache)``.

        All rows advance in lockstep (beam search never pads hypotheses), so no mask is needed.
        """
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        # transformers 5.2x renamed ``past_key_values`` to ``cache``; the cache fills in place
        out = self.body(
            input_ids=ids.to(self.device), use_cache=True, **{_cache_kwarg(self.body): cache}
        )
        return out.last_hidden_state, cache

    def features_of(self, seqs: list[list[int]], batch_tokens: int = 8192) -> list[torch.Tensor]:
        """Features ``[L_i, D_l]`` of many token sequences, batched by similar length."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out: list[torch.Tensor | None] = [None] * len(seqs)
        start = 0
        while start < len(order):
            end = start + 1
            # sorted ascending, so the batch's longest is its last; grow while it fits the budget
            while (
                end < len(order)
                and (end - start + 1) * max(1, len(seqs[order[end]])) <= batch_tokens
            ):
                end += 1
            batch = [seqs[i] for i in order[start:end]]
            longest = max(1, max(len(s) for s in batch))
            ids, mask = pad_ids(batch, self.pad_id, longest)
            feats = self.features(ids, mask.long())
            for j, i in enumerate(order[start:end]):
                out[i] = feats[j, : len(seqs[i])].clone()
            start = end
        return out  # type: ignore[return-value]


def _cache_kwarg(body: nn.Module) -> str:
    """Name of the KV-cache argument of ``body.forward`` in the installed transformers."""
    return _cache_kwarg_of(type(body))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(cls: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def pad_ids(
    seqs: list[list[int]], pad_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> ids ``[B, L]`` and mask ``[B, L]`` (True = real token)."""
    n = max((len(s) for s in seqs), default=0) if length is None else length
    ids = torch.full((len(seqs), max(n, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), max(n, 1)), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
    return ids, mask


def _gpt2_tokenizer() -> Any:
    """The real GPT-2 BPE tokenizer from the shipped encoder.json + vocab.bpe."""
    import inspect

    from transformers import GPT2TokenizerFast

    folder = shipped("gpt2-bpe")
    vocab_file, merges_file = folder / "encoder.json", folder / "vocab.bpe"
    if "vocab_file" in inspect.signature(GPT2TokenizerFast.__init__).parameters:  # transformers 4.x
        tok = GPT2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file))
    else:  # transformers 5.x takes the parsed vocabulary and merges
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").splitlines()
        merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
        tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    return tok


def _tiny_gpt2() -> tuple[nn.Module, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=GPT2_VOCAB, bos_token_id=50256, eos_token_id=50256, **TINY_GPT2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = GPT2LMHeadModel(cfg)
    return model, _gpt2_tokenizer()


def _converted_smollm2() -> Path:
    """The safetensors folder of SmolLM2, converting the shipped GGUF on first use (atomic)."""
    gguf = shipped("smollm2-gguf")
    target = cache_dir() / "lm" / gguf.stem
    if (target / "config.json").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{gguf.stem}."))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # save_pretrained refuses models loaded from GGUF ("quantized, not serializable") although
        # the weights are already dequantised float32: write config and weights ourselves.
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: re-created from the embeddings on load
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        tok.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_pretrained(source: str) -> tuple[nn.Module, Any]:
    import pickle
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():  # torch's note on a refused pickle's protocol: noise
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused a .bin pickle
        raise ModelNotFoundError(
            f"language model {source!r} could not be loaded: its weights are a pickle torch "
            "will not load safely (weights_only); give a folder with model.safetensors"
        ) from e
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(f"language model {source!r} could not be loaded: {first}") from e
    return model, tok


def load_lm(spec: str = SMOLLM2_SPEC, device: str | torch.device = "cpu") -> FrozenLM:
    """Load a frozen LM: ``smollm2`` (shipped GGUF), ``tiny-gpt2`` (random, tests), a local
    folder, or a hub id such as ``gpt2`` (needs the network or a warm HF cache)."""
    if spec == SMOLLM2_SPEC:
        model, tok = _from_pretrained(str(_converted_smollm2()))
    elif spec == "tiny-gpt2":
        model, tok = _tiny_gpt2()
    else:  # a local folder, else a hub id (offline with a warm HF cache, or with network)
        folder = Path(spec).expanduser()
        model, tok = _from_pretrained(str(folder) if folder.is_dir() else spec)
    return _split(model, tok, spec, device)


def _split(model: nn.Module, tok: Any, name: str, device: str | torch.device) -> FrozenLM:
    """Separate body and head, freeze everything, and settle the special token ids."""
    model.eval()
    body = getattr(model, model.base_model_prefix)  # GPT2Model / LlamaModel: ends in final norm
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise ModelNotFoundError(f"language model {name!r} has no causal-LM head")
    for p in model.parameters():
        p.requires_grad_(False)
    body.to(device)
    weight = head.weight.detach().to(device)
    bias = head.bias.detach().to(device) if getattr(head, "bias", None) is not None else None
    eos = tok.eos_token_id
    if eos is None:
        raise ModelNotFoundError(f"language model {name!r}: its tokenizer has no end-of-text token")
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    specials = tuple(sorted({int(i) for i in tok.all_special_ids if 0 <= int(i) < weight.shape[0]}))
    return FrozenLM(
        body=body,
        lm_head_weight=weight,
        lm_head_bias=bias,
        tokenizer=tok,
        dim=int(weight.shape[1]),
        name=name,
        bos_id=int(bos),
        eos_id=int(eos),
        pad_id=int(pad),
        special_ids=specials,
    )
