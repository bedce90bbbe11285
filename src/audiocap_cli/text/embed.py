"""Sentence embeddings with the shipped all-MiniLM-L6-v2, exactly as sentence-transformers does.

The shipped folder is a sentence-transformers model whose ``modules.json`` chains
Transformer -> Pooling (``1_Pooling/config.json``: mean over tokens, nothing else) -> Normalize,
and whose ``sentence_bert_config.json`` truncates inputs at 256 word pieces. We rebuild that
chain with plain ``transformers`` (sentence-transformers itself is not a dependency):

    h = BertModel(tokens)[last_hidden_state]      [B, L, 384]
    e = sum_l mask_l * h_l / max(sum_l mask_l, 1e-9)   [B, 384]   (mean pooling over the mask)
    e = e / max(||e||_2, 1e-12)                   [B, 384]   (torch.nn.functional.normalize)

Texts are tokenised once, sorted by length and batched so that padding is small; the output
keeps the input order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import atomic_write_bytes, fingerprint
from ..errors import ConfigMismatchError, ModelNotFoundError
from ..resources import cache_dir, shipped

# Names accepted for ``SentenceEncoder(model=...)`` besides a local folder path.
SHIPPED_TEXT_MODELS: dict[str, str] = {"minilm": "minilm"}

# sentence-transformers' defaults when a folder lacks its config files.
DEFAULT_MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json
POOLING_EPS = 1e-9  # sentence-transformers' clamp on the token count in mean pooling
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps


@dataclass(frozen=True)
class TextEncoderConfig:
    """What determines a sentence embedding: the model, its truncation and its pooling."""

    model: str = "minilm"  # shipped name or folder path
    dim: int = 384
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    pooling: str = "mean"
    normalize: bool = True
    weights: str = ""  # short hash of the weight file's size and head, so a swap is noticed


def _resolve(model: str) -> Path:
    if model in SHIPPED_TEXT_MODELS:
        return shipped(SHIPPED_TEXT_MODELS[model])
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"text model {model!r}: not a shipped name ({', '.join(SHIPPED_TEXT_MODELS)}) "
            "nor a folder with config.json"
        )
    return path


def _weights_id(folder: Path) -> str:
    """Cheap identity of the weights: file name, size and the first MiB (not a full hash)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = folder / name
        if f.is_file():
            h = hashlib.sha256(f"{name}:{f.stat().st_size}:".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
            return h.hexdigest()[:16]
    raise ModelNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _read_st_config(folder: Path) -> tuple[int, str, bool]:
    """(max_seq_length, pooling, normalize) from the sentence-transformers files, if any."""
    max_len = DEFAULT_MAX_SEQ_LENGTH
    sb = folder / "sentence_bert_config.json"
    if sb.is_file():
        max_len = int(json.loads(sb.read_text()).get("max_seq_length", max_len))
    pooling, normalize = "mean", True
    modules = folder / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text())
        types = [m.get("type", "") for m in mods]
        normalize = any(t.endswith("Normalize") for t in types)
        for m in mods:
            if m.get("type", "").endswith("Pooling"):
                pc = json.loads((folder / m["path"] / "config.json").read_text())
                modes = [k for k, v in pc.items() if k.startswith("pooling_mode_") and v]
                if modes != ["pooling_mode_mean_tokens"]:
                    raise ConfigMismatchError(
                        f"{folder}: pooling {modes} is not supported (only mean pooling)"
                    )
    return max_len, pooling, normalize


def _quiet_load(auto: type, folder: Path) -> torch.nn.Module:
    """``auto.from_pretrained(folder)`` without transformers' "Loading weights" bar on stderr."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto.from_pretrained(str(folder))
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class SentenceEncoder:
    """A frozen sentence encoder: ``encode(texts) -> [N, dim]`` float32, unit-norm rows."""

    def __init__(self, model: str = "minilm", device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy import, only when used

        folder = _resolve(model)
        max_len, pooling, normalize = _read_st_config(folder)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = _quiet_load(AutoModel, folder).to(self.device).eval()
        dim = int(self.model.config.hidden_size)
        # The position table bounds the length too (512 for BERT).
        max_len = min(max_len, int(getattr(self.model.config, "max_position_embeddings", max_len)))
        self.config = TextEncoderConfig(
            model=model,
            dim=dim,
            max_seq_length=max_len,
            pooling=pooling,
            normalize=normalize,
            weights=_weights_id(folder),
        )
        self.dim = dim

    @property
    def fingerprint(self) -> str:
        """Short hash of :attr:`config`; vectors from encoders with equal fingerprints agree."""
        return fingerprint(self.config)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[N, dim]`` (rows unit-norm when the model normalises).

        ``progress`` is called with the number of texts finished after each batch.
        """
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids: list[list[int]] = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.config.max_seq_length,
            add_special_tokens=True,
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: a too-big batch fails early
        pad_id = int(self.tokenizer.pad_token_id or 0)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx[0]])
            tok = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = ids[i]
                tok[row, : len(seq)] = torch.as_tensor(seq)
                mask[row, : len(seq)] = 1
            tok, mask = tok.to(self.device), mask.to(self.device)
            hidden = self.model(
                input_ids=tok, attention_mask=mask, token_type_ids=torch.zeros_like(tok)
            ).last_hidden_state  # [b, L, dim]
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=POOLING_EPS)  # [b, dim]
            if self.config.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1, eps=NORMALIZE_EPS)
            out[idx] = emb.float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
        return out


def texts_key(texts: Sequence[str]) -> str:
    """Content hash of an ordered list of texts (for caches)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def encode_cached(
    encoder: SentenceEncoder,
    texts: Sequence[str],
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
    root: str | Path | None = None,
) -> np.ndarray:
    """:meth:`SentenceEncoder.encode` memoised on disk (``<cache>/text_vectors/<fp>-<key>.npy``).

    The key is the encoder fingerprint plus a hash of the texts in order, so a changed model or
    corpus never reuses stale vectors.
    """
    folder = Path(root) if root is not None else cache_dir() / "text_vectors"
    path = folder / f"{encoder.fingerprint}-{texts_key(texts)}.npy"
    if path.is_file():
        vecs = np.load(path)
        if vecs.shape == (len(texts), encoder.dim):
            if progress is not None:
                progress(len(texts))
            return vecs
    vecs = encoder.encode(texts, batch_size=batch_size, progress=progress)
    import io

    buf = io.BytesIO()
    np.save(buf, vecs)
    atomic_write_bytes(path, buf.getvalue())
    return vecs
