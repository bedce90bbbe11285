"""The model directory: where every trained stage lives, and the config that ties them.

```
model/
  config.json     ModelConfig (encoder, clip policy, retrieval kind, K, dataset) + audiocap version
  similarity/     caption-similarity labels of the training captions + their config
  retriever/      best.safetensors + retriever.json + metrics.jsonl (+ last.safetensors while training)
  index/          hnswlib index + ids + captions + index.json (a symlink to the current version)
  decoder/        trainable decoder weights (safetensors) + decoder.json naming the frozen LM
```
Each stage checks its own config on load; this module only names the places and checks the
shared settings (which encoder, which clip policy), so that stages trained on different
features are never combined.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..audio.io import ClipPolicy
from ..config import check_config, load_config, save_config
from ..errors import ModelNotFoundError
from ..version import __version__

CONFIG_NAME = "config.json"
DECODER_CONFIG = "decoder.json"  # named here so that listing a model's decoders needs no torch
RETRIEVALS = ("triplet", "mean", "zeroshot", "labels")


@dataclass(frozen=True)
class ModelConfig:
    """Settings shared by every stage of one model directory.

    retrieval: how a clip finds its guidance captions: "triplet" (the paper's trained
        retriever), "mean" (1NN on mean-pooled raw encoder frames: the paper's 1NN-VGGish
        baseline), "zeroshot" (text-only bootstrap: AudioSet tags bridge audio and captions),
        or "labels" (label-grounded: clips' AudioSet labels vs the audio's class scores).
    dataset: the dataset folder (or manifest) the model was last trained or indexed on, as an
        absolute path; ``audiocap eval`` takes its references from it when ``--dataset`` is absent.
    """

    encoder: str = "yamnet"
    encoder_weights: str | None = None
    clip_seconds: float = 10.0
    retrieval: str = "triplet"
    k: int = 5  # guidance captions per clip (the paper's K)
    dataset: str | None = None

    def policy(self, long_audio: str = "crop", hop_seconds: float | None = None) -> ClipPolicy:
        return ClipPolicy(seconds=self.clip_seconds, long_audio=long_audio, hop_seconds=hop_seconds)


class ModelDir:
    """Paths of one model directory and its shared config."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    similarity = property(lambda self: self.path / "similarity")
    retriever = property(lambda self: self.path / "retriever")
    index = property(lambda self: self.path / "index")
    decoder = property(lambda self: self.path / "decoder")
    config_path = property(lambda self: self.path / CONFIG_NAME)

    def has_decoder(self) -> bool:
        """Whether ``decoder/`` holds a decoder (a retrieval-only model has none)."""
        return (self.decoder / DECODER_CONFIG).is_file()

    def exists(self) -> bool:
        return self.config_path.is_file()

    def dataset(self) -> Path | None:
        """The dataset recorded in the config (see ``ModelConfig.dataset``), or None."""
        if not self.exists():
            return None
        recorded = self.load().dataset
        return Path(recorded) if recorded else None

    def load(self) -> ModelConfig:
        if not self.exists():
            raise ModelNotFoundError(
                f"{self.path}: not a model directory (no {CONFIG_NAME}); build one with "
                "`audiocap train-retriever`, `audiocap build-index` or `audiocap bootstrap`"
            )
        return load_config(ModelConfig, self.config_path)

    def init(self, cfg: ModelConfig, **changes: Any) -> ModelConfig:
        """Create the directory with ``cfg``, or check it against the one already there.

        ``changes`` may update fields that later stages own (e.g. ``retrieval``) without
        invalidating the others; the encoder and clip length must match.
        """
        if self.exists():
            old = self.load()
            check_config(
                cfg,
                old,
                f"model {self.path}",
                fields=("encoder", "encoder_weights", "clip_seconds"),
            )
            cfg = replace(old, **changes)
        else:
            cfg = replace(cfg, **changes)
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path, audiocap_version=__version__)
        return cfg
