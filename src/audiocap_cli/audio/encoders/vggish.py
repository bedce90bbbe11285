"""VGGish (models/research/audioset/vggish) in torch, in the harritaylor/torchvggish layout.

No VGGish weights ship with audiocap: pass ``weights`` = a local path or an http(s) URL of a
torch state dict with torchvggish's key names, e.g. ``vggish-10086976.pth`` from
https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth ::

    features.{0,3,6,8,11,13}.{weight,bias}   3x3 convs 1-64-128-256-256-512-512
    embeddings.{0,2,4}.{weight,bias}         12288-4096-4096-128 fully connected

A ``.safetensors`` file with the same keys also works; ``module.``/``vggish.`` key prefixes are
stripped and the PCA post-processor (``pproc.*``) is ignored: frames are the raw 128-d
embeddings after the last ReLU (as torchvggish with ``postprocess=False``).

Front end as vggish_input.py: the YAMNet log-mel but log(mel + 0.01), and 0.96 s patches
without overlap; the samples after the last whole patch are dropped (as the original) and
clips shorter than 0.975 s are zero-padded to one patch (the original would give none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from ...config import file_sha256
from ...errors import ModelNotFoundError
from ...resources import cache_dir
from .base import AudioEncoder, EncoderConfig

EMBEDDING_DIM = 128
# vggish_params.py: LOG_OFFSET = 0.01, EXAMPLE_WINDOW/HOP_SECONDS = 0.96 -> 96-frame hop.
VGGISH_CONFIG = EncoderConfig(
    name="vggish",
    dim=EMBEDDING_DIM,
    log_offset=0.01,
    patch_hop_frames=96,
    pad_to_hop=False,
    num_classes=0,
)
# torchvggish make_layers(): conv channels, "M" = 2x2 max-pool.
_FEATURES: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
# After four 2x2 pools a 96 x 64 patch is 6 x 4 x 512.
_FLAT_DIM = 512 * 6 * 4
_IGNORED_PREFIXES = ("pproc.",)
_STRIPPED_PREFIXES = ("module.", "vggish.")


class VGGish(AudioEncoder):
    """VGGish encoder: frames = 128-d embeddings every 0.96 s, no class scores."""

    # Activations are 4x YAMNet's per patch: keep a GPU step near the same ~1.6 GB.
    accelerator_chunk_patches = 1024

    def __init__(self, config: EncoderConfig = VGGISH_CONFIG, init_weights: bool = True) -> None:
        """``init_weights=False`` leaves the 72 M weights uninitialised (about a second saved)
        for when a state dict is loaded next."""
        super().__init__(config)
        # The widest activation (64 x 96 x 64 floats = 1.5 MB per patch) is 4x YAMNet's.
        self.chunk_patches = 8
        with contextlib.nullcontext() if init_weights else torch.device("meta"):
            layers: list[nn.Module] = []
            cin = 1
            for v in _FEATURES:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                    cin = int(v)
            # Names and indices match torchvggish so its state dicts load as they are.
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(
                nn.Linear(_FLAT_DIM, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, EMBEDDING_DIM),
                nn.ReLU(inplace=True),
            )
        if not init_weights:
            self.features.to_empty(device="cpu")
            self.embeddings.to_empty(device="cpu")

    def forward_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Patches ``[P, 1, 96, 64]`` -> (embeddings ``[P, 128]``, None)."""
        h = self.features(x)  # [P, 512, 6, 4]
        # TF flattens NHWC; torchvggish permutes to [P, 6, 4, 512] before flattening.
        return self.embeddings(h.permute(0, 2, 3, 1).flatten(1)), None

    def load_torchvggish(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a torchvggish-layout state dict, with a one-line error naming what is wrong."""
        cleaned: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith(_IGNORED_PREFIXES):
                continue
            for prefix in _STRIPPED_PREFIXES:
                key = key.removeprefix(prefix)
            cleaned[key] = value
        own = self.state_dict()
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own))
        bad = [k for k in own if k in cleaned and tuple(cleaned[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            detail = "; ".join(
                f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for what, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", bad),
                )
                if keys
            )
            raise ModelNotFoundError(f"{where}: not a torchvggish state dict ({detail})")
        self.load_state_dict({k: v.float() for k, v in cleaned.items()})


def _fetch(weights: str) -> Path:
    """A local path for ``weights``: the path itself, or a URL downloaded once into the cache."""
    if urllib.parse.urlparse(weights).scheme in ("http", "https"):
        name = Path(urllib.parse.urlparse(weights).path).name or "vggish.pth"
        dest = cache_dir() / "weights" / name
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(weights, str(dest), progress=False)
            except Exception as e:  # noqa: BLE001 - network errors come in many types
                raise ModelNotFoundError(f"{weights}: download failed ({e})") from e
        return dest
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{weights}: VGGish weight file not found")
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/pickle raise many types for a bad file
        raise ModelNotFoundError(f"{path}: unreadable weight file ({type(e).__name__})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_vggish(
    weights: str | Path | None, device: str = "cpu", channels_last: bool = True
) -> VGGish:
    """VGGish with torchvggish weights from a path or URL (see the module docstring)."""
    if not weights:
        raise ModelNotFoundError(
            "vggish weights are not shipped: pass a path or URL of a torchvggish state dict "
            "(e.g. vggish-10086976.pth from github.com/harritaylor/torchvggish releases)"
        )
    path = _fetch(str(weights))
    state = _read_state(path)
    config = dataclasses.replace(VGGISH_CONFIG, weights=file_sha256(path)[:16])
    model = VGGish(config, init_weights=False)
    model.load_torchvggish(state, str(weights))
    model.freeze().place(device, channels_last)
    return model
