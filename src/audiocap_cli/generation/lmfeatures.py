"""A persistent, content-keyed store of frozen-LM features per caption.

The guided decoder reads the frozen LM's last hidden state of ``[bos] caption`` both for its
targets (Ψ_hyp under teacher forcing) and, with ``guidance="separate"``, for each guidance
caption (Ψ_ref): the same sequence, so one store serves both. The LM is frozen, so a caption's
features never change: they are computed once, in chunks (an interrupted run keeps every
finished chunk), and kept under ``cache_dir()/lmfeat/<lm fingerprint>/``.

Each chunk is one safetensors file holding ``feats [sum L_i, D_l]`` (float16, ~5e-4 relative
rounding, far below the decoder's dropout noise) and ``offsets [n + 1]``, plus a JSON list of
its captions. Reading a chunk costs one ``mmap``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import atomic_write_text
from ..resources import cache_dir
from .lm import FrozenLM

CHUNK = 2000  # captions per chunk: SmolLM2 on 2 CPU cores computes one in ~1-2 min


def caption_seq(lm: FrozenLM, caption: str, max_len: int) -> list[int]:
    """``[bos] w1 .. wn`` (n <= max_len): the sequence whose features the decoder reads."""
    return [lm.bos_id] + lm.tokenize([caption], max_len)[0]


class LMFeatureStore:
    """Features ``[L, D_l]`` (float16) of ``[bos] caption`` for one LM and one ``max_len``."""

    def __init__(self, lm: FrozenLM, max_len: int, root: str | Path | None = None) -> None:
        self.lm = lm
        self.max_len = max_len
        base = Path(root) if root is not None else cache_dir() / "lmfeat"
        self.dir = base / f"{lm.fingerprint}-L{max_len}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._items: dict[str, torch.Tensor] = {}
        self._loaded: set[str] = set()
        self._load_chunks()

    def _load_chunks(self) -> None:
        for meta in sorted(self.dir.glob("*.json")):
            if meta.stem in self._loaded or not meta.with_suffix(".safetensors").is_file():
                continue
            texts = json.loads(meta.read_text())
            t = load_file(str(meta.with_suffix(".safetensors")))
            feats, offs = t["feats"], t["offsets"].tolist()
            for i, text in enumerate(texts):
                self._items[text] = feats[offs[i] : offs[i + 1]]
            self._loaded.add(meta.stem)

    def __contains__(self, text: str) -> bool:
        return text in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> torch.Tensor | None:
        """float16 ``[L, D_l]`` of a stored caption, or None."""
        return self._items.get(text)

    __call__ = get  # a store is the ``features`` callable of decoder.train_decoder

    def ensure(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> None:
        """Compute and persist the features of every text not yet stored, chunk by chunk."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._items))
        for s in range(0, len(todo), CHUNK):
            chunk = todo[s : s + CHUNK]
            feats = self.lm.features_of([caption_seq(self.lm, t, self.max_len) for t in chunk])
            flat = torch.cat([f.to(torch.float16) for f in feats])
            offs = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)
            name = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:16]
            tmp = self.dir / f".{name}.tmp"
            save_file({"feats": flat.contiguous(), "offsets": offs}, str(tmp))
            tmp.replace(self.dir / f"{name}.safetensors")
            atomic_write_text(
                self.dir / f"{name}.json", json.dumps(chunk)
            )  # written last: marks the chunk done
            for text, f in zip(chunk, feats):
                self._items[text] = f.to(torch.float16)
            self._loaded.add(name)
            if progress is not None:
                progress(len(chunk))
