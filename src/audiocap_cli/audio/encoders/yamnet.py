"""YAMNet (models/research/audioset/yamnet) in torch, weights read from the TF checkpoint.

MobileNet v1 over 96 x 64 log-mel patches: a 3x3 stride-2 conv then 13 depthwise-separable
blocks, each conv followed by batch norm (centre only, no scale, eps 1e-4) and ReLU; global
average pooling gives the 1024-d embedding, a dense layer + sigmoid the 521 AudioSet scores.
At load time each batch norm is folded into the conv before it (``fuse=True``).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import file_sha256
from ...errors import ModelNotFoundError
from .base import AudioEncoder, EncoderConfig
from .tfcheckpoint import read_checkpoint

# (kernel, stride, output channels) per layer, from yamnet.py's _YAMNET_LAYER_DEFS; layer 1
# is a full conv, the rest depthwise-separable.
LAYER_DEFS: tuple[tuple[int, int, int], ...] = (
    (3, 2, 32),
    (3, 1, 64),
    (3, 2, 128),
    (3, 1, 128),
    (3, 2, 256),
    (3, 1, 256),
    (3, 2, 512),
    (3, 1, 512),
    (3, 1, 512),
    (3, 1, 512),
    (3, 1, 512),
    (3, 1, 512),
    (3, 2, 1024),
    (3, 1, 1024),
)
EMBEDDING_DIM = 1024
NUM_CLASSES = 521  # AudioSet ontology classes in yamnet_class_map.csv
BATCHNORM_EPSILON = 1e-4  # params.py batchnorm_epsilon
# Checkpoint layers holding weights: conv + bn, then (depthwise, bn, pointwise, bn) x 13, dense.
NUM_WEIGHT_LAYERS = 2 + 4 * (len(LAYER_DEFS) - 1) + 1

YAMNET_CONFIG = EncoderConfig(
    name="yamnet",
    dim=EMBEDDING_DIM,
    log_offset=0.001,
    patch_hop_frames=48,
    pad_to_hop=True,
    num_classes=NUM_CLASSES,
)

_KEY = re.compile(r"^(.*?)layer_with_weights-(\d+)/(\w+)/\.ATTRIBUTES/VARIABLE_VALUE$")


class SamePad(nn.Module):
    """TensorFlow 'SAME' padding for a strided conv: the odd pixel goes at the bottom/right
    (torch's symmetric ``padding=1`` would shift every stride-2 output by one input pixel)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            out = -(-size // self.stride)
            total = max((out - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)


def _conv(
    cin: int, cout: int, kernel: int, stride: int, groups: int, fused: bool
) -> list[nn.Module]:
    # Stride 1 'SAME' with an odd kernel is symmetric, so conv's own padding does it.
    pad = (kernel // 2) if stride == 1 else 0
    layers: list[nn.Module] = [] if stride == 1 else [SamePad(kernel, stride)]
    layers.append(nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=fused))
    if not fused:
        layers.append(nn.BatchNorm2d(cout, eps=BATCHNORM_EPSILON))
    layers.append(nn.ReLU(inplace=True))
    return layers


class YAMNet(AudioEncoder):
    """YAMNet encoder: frames = 1024-d embeddings every 0.48 s, scores = 521 sigmoid scores."""

    def __init__(
        self,
        config: EncoderConfig = YAMNET_CONFIG,
        class_names: list[str] | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__(config)
        self.fused = fused
        layers: list[nn.Module] = []
        cin = 1
        for i, (kernel, stride, cout) in enumerate(LAYER_DEFS):
            if i == 0:
                layers += _conv(cin, cout, kernel, stride, 1, fused)
            else:
                layers += _conv(cin, cin, kernel, stride, cin, fused)
                layers += _conv(cin, cout, 1, 1, 1, fused)
            cin = cout
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(EMBEDDING_DIM, config.num_classes)
        self._class_names = list(class_names or [])

    def class_names(self) -> list[str]:
        return list(self._class_names)

    def forward_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``[P, 1, 96, 64]`` -> (embeddings ``[P, 1024]``, scores ``[P, 521]``)."""
        emb = self.body(x).mean(dim=(2, 3))
        return emb, torch.sigmoid(self.classifier(emb))

    def load_tf_weights(self, variables: dict[str, np.ndarray], where: str) -> None:
        """Copy the original checkpoint's variables in (folding batch norm when ``fused``)."""
        layers = _weight_layers(variables, where)
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        bns = [m for m in self.body if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            for j, conv in enumerate(convs):
                w = layers[2 * j]
                kernel = w.get("kernel", w.get("depthwise_kernel"))
                if kernel is None:
                    raise ModelNotFoundError(f"{where}: layer {2 * j} has no conv kernel")
                # TF: HWIO (conv) or HW,C,1 (depthwise) -> torch OIHW / C,1,H,W.
                kernel = (
                    kernel.transpose(2, 3, 0, 1)
                    if "depthwise_kernel" in w
                    else kernel.transpose(3, 2, 0, 1)
                )
                kernel = torch.from_numpy(np.ascontiguousarray(kernel))
                bn = layers[2 * j + 1]
                gamma = (
                    torch.from_numpy(bn["gamma"]) if "gamma" in bn else torch.ones(kernel.shape[0])
                )
                beta, mean, var = (
                    torch.from_numpy(bn[k]) for k in ("beta", "moving_mean", "moving_variance")
                )
                if kernel.shape != conv.weight.shape or beta.shape[0] != kernel.shape[0]:
                    raise ModelNotFoundError(
                        f"{where}: layer {2 * j} has shape {tuple(kernel.shape)}, "
                        f"YAMNet expects {tuple(conv.weight.shape)}"
                    )
                if self.fused:
                    # bn(conv(x)) = scale * conv(x) + (beta - scale * mean), scale = gamma / std.
                    scale = gamma / torch.sqrt(var + BATCHNORM_EPSILON)
                    conv.weight.copy_(kernel * scale[:, None, None, None])
                    conv.bias.copy_(beta - scale * mean)
                else:
                    conv.weight.copy_(kernel)
                    bns[j].weight.copy_(gamma)
                    bns[j].bias.copy_(beta)
                    bns[j].running_mean.copy_(mean)
                    bns[j].running_var.copy_(var)
            dense = layers[NUM_WEIGHT_LAYERS - 1]
            if dense.get("kernel") is None or dense["kernel"].shape != (
                EMBEDDING_DIM,
                self.config.num_classes,
            ):
                raise ModelNotFoundError(f"{where}: the classifier layer is not YAMNet's")
            self.classifier.weight.copy_(torch.from_numpy(dense["kernel"].T.copy()))
            self.classifier.bias.copy_(torch.from_numpy(dense["bias"]))


def _weight_layers(variables: dict[str, np.ndarray], where: str) -> list[dict[str, np.ndarray]]:
    """Group ``.../layer_with_weights-<i>/<name>`` variables into YAMNet's 55 weight layers.

    The shipped SavedModel nests the TF-Hub model (``layer-1/layer/_func/_yamnet/...``); any
    prefix is accepted as long as exactly one holds a complete set of 55 layers.
    """
    groups: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key, value in variables.items():
        m = _KEY.match(key)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
    full = [g for g in groups.values() if sorted(g) == list(range(NUM_WEIGHT_LAYERS))]
    if len(full) != 1:
        raise ModelNotFoundError(
            f"{where}: not a YAMNet checkpoint (expected one model with {NUM_WEIGHT_LAYERS} weight layers)"
        )
    return [full[0][i] for i in range(NUM_WEIGHT_LAYERS)]


def read_class_map(csv_path: str | Path) -> list[tuple[str, str]]:
    """(AudioSet mid, display name) per class, in class-index order, from yamnet_class_map.csv
    (index,mid,display_name)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [
            (row["mid"], row["display_name"]) for row in sorted(rows, key=lambda r: int(r["index"]))
        ]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"{csv_path}: unreadable YAMNet class map ({e!r})") from e


def read_class_names(csv_path: str | Path) -> list[str]:
    """Display names, in class-index order, from yamnet_class_map.csv."""
    return [name for _, name in read_class_map(csv_path)]


def load_yamnet(
    weights: str | Path, device: str = "cpu", fused: bool = True, channels_last: bool = True
) -> YAMNet:
    """YAMNet from a SavedModel / checkpoint dir (``variables/variables.index`` inside, class
    map at ``assets/yamnet_class_map.csv``) or a checkpoint prefix ``.../variables``."""
    path = Path(weights)
    prefix = path / "variables" / "variables" if path.is_dir() else path
    if not prefix.with_name(prefix.name + ".index").is_file():
        raise ModelNotFoundError(
            f"{weights}: no YAMNet checkpoint (variables/variables.index) found"
        )
    class_map = (
        (path if path.is_dir() else prefix.parent.parent) / "assets" / "yamnet_class_map.csv"
    )
    if not class_map.is_file():
        raise ModelNotFoundError(f"{class_map}: YAMNet class map not found")
    variables = read_checkpoint(prefix)  # raises on a bad index or a missing data shard
    digest = file_sha256(*sorted(prefix.parent.glob(prefix.name + ".data-*")))[:16]
    config = dataclasses.replace(YAMNET_CONFIG, weights=digest)
    names = read_class_names(class_map)
    if len(names) != NUM_CLASSES:
        raise ModelNotFoundError(f"{class_map}: {len(names)} classes, YAMNet has {NUM_CLASSES}")
    model = YAMNet(config, names, fused=fused)
    model.load_tf_weights(variables, str(weights))
    model.freeze().place(device, channels_last)
    return model
