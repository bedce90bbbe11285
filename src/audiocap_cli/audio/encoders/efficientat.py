"""EfficientAT "mn04_as" (Schmid, Koutini, Widmer, ICASSP 2023) in torch: an AudioSet tagger.

A MobileNetV3-Large at width 0.4, trained on AudioSet by distillation from transformer
ensembles, over its own Kaldi-style log-mel front end at 32 kHz. Written here from the
original's description (github fschmid56/EfficientAT, MIT; the licence ships beside the
weights in ``data/encoders/efficientat/``); the state dict keys follow its checkpoints.

Front end (the original's ``AugmentMelSTFT`` in eval mode): pre-emphasis ``x[n+1] - 0.97 x[n]``
(one sample shorter), ``torch.stft`` with n_fft 1024, hop 320, a symmetric 800-point Hann
window centred in the FFT frame, centred frames with reflect padding; power spectrum; 128
Kaldi triangular mel banks over 0-15000 Hz (the Nyquist bin weighted 0); ``log(mel + 1e-5)``
then ``(x + 4.5) / 5``. The network sees ``[B, 1, 128 mels, frames]``.

Output per input row: T = 1 clip-level frame. ``frames`` is the 384-d global average of the
last conv layer (what feeds the classifier head); ``scores`` the 527 sigmoid scores, in
AudioSet's ``class_labels_indices.csv`` order. Each row's trailing exact-zero samples (the
pipeline's padding to the window length) are dropped first, so a 3 s clip is heard as 3 s,
as in the original's one-pass inference.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import file_sha256
from ...errors import ModelNotFoundError
from .base import EncoderOutput

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "encoders" / "efficientat"
SHIPPED_WEIGHTS = SHIPPED_DIR / "mn04_as.safetensors"
SHIPPED_CLASSES = SHIPPED_DIR / "class_labels_indices.csv"

NUM_CLASSES = 527
WIDTH = 0.4
BATCHNORM_EPSILON = 1e-3  # the original's BatchNorm2d(eps=0.001)
# MobileNetV3-Large bottlenecks at width 1.0 (Howard et al. 2019, table 1), scaled by WIDTH:
# (input, kernel, expanded, output channels, squeeze-excitation, hard-swish, stride).
BLOCKS: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)
HEAD_HIDDEN = 1280  # the MLP head's hidden width at width 1.0
# The clip length the model was trained on (AudioSet), and the pipeline's default window.
CLIP_SECONDS = 10.0
# Rows of equal length per network call on CPU: of 1, 4, 8 and 16 ten-second rows on 2 cores,
# 8 in channels-last ran fastest (docs/experiments.md). On a GPU, launches cost more: big steps.
DEFAULT_CHUNK_ROWS = 8
ACCELERATOR_CHUNK_ROWS = 256


def scaled(channels: int, width: float = WIDTH) -> int:
    """Channels at ``width``: the nearest multiple of 8 (at least 8), never more than 10%
    below ``channels * width`` (MobileNet's rounding, so the checkpoint's shapes come out)."""
    v = channels * width
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


@dataclass(frozen=True)
class EfficientATConfig:
    """Everything that changes the encoder's output; its fingerprint keys feature caches."""

    name: str = "efficientat"
    variant: str = "mn04_as"
    dim: int = 384  # channels of the last conv layer at width 0.4 (6 x 64)
    width: float = WIDTH
    sample_rate: int = 32000
    preemphasis: float = 0.97
    window_samples: int = 800  # 25 ms symmetric Hann window...
    hop_samples: int = 320  # ...every 10 ms...
    fft_length: int = 1024  # ...centred in a 1024-point frame
    mel_bands: int = 128
    mel_min_hz: float = 0.0
    mel_max_hz: float = 15000.0  # eval mode: sr / 2 - 2000 / 2
    log_offset: float = 1e-5
    norm_shift: float = 4.5  # (log mel + 4.5) / 5
    norm_scale: float = 5.0
    # Trailing zeros are dropped down to this many samples: 0.1 s, the shortest audio the
    # pipeline captions (audio.io.MIN_SECONDS), so an all-silent window is 0.1 s of zeros; far
    # above what the centred STFT's reflect padding needs (more than n_fft / 2 samples).
    min_samples: int = 3200
    num_classes: int = NUM_CLASSES
    weights: str = ""  # short sha256 of the weight file, so new weights mean new caches


# ---- front end -----------------------------------------------------------------------------


def kaldi_mel_banks(
    num_bins: int, fft_length: int, sample_rate: int, low_hz: float, high_hz: float
) -> np.ndarray:
    """Kaldi's triangular mel filters ``[num_bins, fft_length // 2 + 1]`` float32 (as
    torchaudio.compliance.kaldi.get_mel_banks without VTLN warping, plus a zero column for the
    Nyquist bin, which Kaldi leaves out).

    mel(f) = 1127 ln(1 + f / 700); the num_bins + 2 edges are evenly spaced in mel from
    mel(low_hz) to mel(high_hz); each filter rises from its left edge to 1 at its centre and
    falls to 0 at its right edge, evaluated in mel at FFT bin k's frequency k * sr / fft_length.
    """
    if not 0.0 <= low_hz < high_hz <= sample_rate / 2:
        raise ValueError(f"mel range {low_hz}-{high_hz} Hz outside 0-{sample_rate / 2} Hz")

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    delta = (mel(high_hz) - mel(low_hz)) / (num_bins + 1)
    left = mel(low_hz) + delta * np.arange(num_bins, dtype=np.float64)[:, None]  # [M, 1]
    center, right = left + delta, left + 2 * delta
    bins = mel(np.arange(fft_length // 2) * (sample_rate / fft_length))[None]  # [1, K]
    rising = (bins - left) / (center - left)
    falling = (right - bins) / (right - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, ((0, 0), (0, 1))).astype(np.float32)


class KaldiLogMel(nn.Module):
    """waves ``[B, N]`` -> normalised log-mel ``[B, mels, 1 + (N - 1) // hop]`` (see module doc)."""

    window_t: torch.Tensor
    mel_t: torch.Tensor

    def __init__(self, c: EfficientATConfig) -> None:
        super().__init__()
        self.c = c
        # Symmetric ("periodic=False") Hann, as the original; torch.stft centres it in n_fft.
        self.register_buffer(
            "window_t", torch.hann_window(c.window_samples, periodic=False), persistent=False
        )
        mel = kaldi_mel_banks(c.mel_bands, c.fft_length, c.sample_rate, c.mel_min_hz, c.mel_max_hz)
        self.register_buffer("mel_t", torch.from_numpy(mel), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        c = self.c
        x = waves[:, 1:] - c.preemphasis * waves[:, :-1]
        spec = torch.stft(
            x,
            c.fft_length,
            hop_length=c.hop_samples,
            win_length=c.window_samples,
            window=self.window_t,
            center=True,
            pad_mode="reflect",
            normalized=False,
            return_complex=True,
        )  # [B, n_fft/2 + 1, F]
        power = spec.real.square() + spec.imag.square()
        return (torch.log(self.mel_t @ power + c.log_offset) + c.norm_shift) / c.norm_scale


# ---- network -------------------------------------------------------------------------------
# Submodule names give the original checkpoints' state dict keys: features.<i> (stem conv,
# bottlenecks as features.<i>.block.<j>, last conv), classifier.2 and classifier.5.


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> batch norm -> activation; ``fuse`` folds the norm into the conv."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BATCHNORM_EPSILON),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)

    @torch.no_grad()
    def fuse(self) -> None:
        """bn(conv(x)) = s * conv(x) + (beta - s * mean), s = gamma / sqrt(var + eps)."""
        conv, bn = self[0], self[1]
        if not isinstance(bn, nn.BatchNorm2d):
            return
        assert isinstance(conv, nn.Conv2d) and bn.running_var is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=True,
        ).to(conv.weight.device)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - scale * bn.running_mean)  # type: ignore[operator]
        self[0], self[1] = fused, nn.Identity()


class _Gate(nn.Module):
    """Squeeze-excitation gate over channels: mean over (freq, time) -> fc -> ReLU -> fc ->
    sigmoid, one weight per channel."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation. The original can run gates over channels, frequency and time
    side by side and take their maximum; mn04_as has the channel gate alone, kept in a list so
    the keys read ``conc_se_layers.0``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([_Gate(channels, scaled(channels // 4, 1.0))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class Bottleneck(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk (stride) -> [SE] -> 1x1 project (no
    activation), plus the input when the shape is kept."""

    def __init__(
        self, cin: int, kernel: int, mid: int, cout: int, se: bool, hswish: bool, stride: int
    ) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(ConvNormAct(cin, mid, 1, act=act))
        layers.append(ConvNormAct(mid, mid, kernel, stride, groups=mid, act=act))
        if se:
            layers.append(SqueezeExcite(mid))
        layers.append(ConvNormAct(mid, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.residual else y


class MobileNetV3(nn.Module):
    """log-mel ``[B, 1, mels, frames]`` -> (pooled embedding ``[B, D]``, logits ``[B, C]``)."""

    def __init__(self, width: float = WIDTH, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        stem = scaled(BLOCKS[0][0], width)
        layers: list[nn.Module] = [ConvNormAct(1, stem, 3, 2, act=nn.Hardswish)]
        for cin, kernel, mid, cout, se, hswish, stride in BLOCKS:
            layers.append(
                Bottleneck(
                    scaled(cin, width),
                    kernel,
                    scaled(mid, width),
                    scaled(cout, width),
                    se,
                    hswish,
                    stride,
                )
            )
        last_in = scaled(BLOCKS[-1][3], width)
        self.dim = 6 * last_in
        layers.append(ConvNormAct(last_in, self.dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = scaled(HEAD_HIDDEN, width)
        # Indices 0, 1, 4 (pool, flatten, dropout) hold no weights; forward applies the
        # pooling once for the embedding and the rest of the head to it.
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(self.dim, hidden),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(x).mean(dim=(2, 3))
        head = self.classifier
        return emb, head[5](head[3](head[2](emb)))

    def fuse(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.fuse()


# ---- encoder -------------------------------------------------------------------------------


class EfficientAT(nn.Module):
    """The encoder surface the pipeline uses (as audio.encoders.base.AudioEncoder): waves
    ``[B, N]`` at 32 kHz -> frames ``[B, 1, 384]`` and scores ``[B, 1, 527]``."""

    def __init__(
        self, config: EfficientATConfig = EfficientATConfig(), class_names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.frontend = KaldiLogMel(config)
        self.net = MobileNetV3(config.width, config.num_classes)
        if self.net.dim != config.dim:
            raise ValueError(
                f"width {config.width} gives {self.net.dim}-d frames, not {config.dim}"
            )
        self._class_names = list(class_names or [])
        self.chunk_rows = DEFAULT_CHUNK_ROWS
        self.channels_last = False

    # ---- description -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_seconds(self) -> float:
        """One frame per input row, whatever its length: given as the 10 s AudioSet clip the
        model was trained on, the pipeline's default window."""
        return CLIP_SECONDS

    @property
    def device(self) -> torch.device:
        return self.frontend.mel_t.device

    def class_names(self) -> list[str]:
        """Display names of the 527 ``scores`` classes (class_labels_indices.csv order)."""
        return list(self._class_names)

    def num_frames(self, seconds: float) -> int:
        """Output frames T for an input of ``seconds``: always 1 (a clip-level tagger)."""
        return 1

    # ---- computation -----------------------------------------------------------------------
    def audible_lengths(self, waves: torch.Tensor) -> list[int]:
        """Per row, the samples up to its last non-zero one, at least ``min_samples`` (or the
        whole row if shorter: ``encode`` pads such rows up to ``min_samples`` first)."""
        n = waves.shape[1]
        lengths = torch.full((waves.shape[0],), n, dtype=torch.long, device=waves.device)
        padded = (waves[:, -1] == 0).nonzero().flatten() if n else lengths[:0]
        if len(padded):  # only rows ending in a zero are searched (a full window ends in audio)
            tail = (waves[padded] != 0).flip(1)
            # argmax finds the first True (from the end); a row of zeros has none: length 0.
            lengths[padded] = torch.where(tail.any(1), n - tail.to(torch.uint8).argmax(1), 0)
        return lengths.clamp(min=min(self.config.min_samples, n)).tolist()

    def forward_rows(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal-length rows ``[B, N]`` -> (embeddings ``[B, D]``, sigmoid scores ``[B, C]``)."""
        x = self.frontend(waves)[:, None]  # [B, 1, mels, frames]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb, logits = self.net(x)
        return emb, torch.sigmoid(logits)

    # The feature cache passes each window's real length (audio.io.SegmentStream.length):
    # silence a file really ends with is heard, as the original model hears it.
    takes_lengths = True

    def encode(
        self, waves: torch.Tensor | np.ndarray, lengths: Sequence[int] | None = None
    ) -> EncoderOutput:
        """waves ``[B, N]`` float32 in [-1, 1] at 32 kHz (``[N]`` is taken as B = 1) -> frames
        ``[B, 1, D]`` and scores ``[B, 1, C]`` on the encoder's device. Rows are cut to their
        real length: ``lengths`` (samples of audio before each row's zero padding), else up
        to each row's last non-zero sample; rows of equal length run together,
        ``chunk_rows`` at a time."""
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.ndim != 2:
            raise ValueError(f"encode expects waves [B, N], got shape {tuple(waves.shape)}")
        c = self.config
        b = waves.shape[0]
        frames = torch.empty(b, 1, c.dim, device=self.device)
        scores = torch.empty(b, 1, c.num_classes, device=self.device)
        if b == 0:
            return EncoderOutput(frames, scores)
        waves = waves.to(self.device)
        if waves.shape[1] < c.min_samples:  # too short for the STFT's reflect padding
            waves = F.pad(waves, (0, c.min_samples - waves.shape[1]))
        groups: dict[int, list[int]] = {}
        if lengths is None:
            cut = self.audible_lengths(waves)
        else:
            if len(lengths) != b:
                raise ValueError(f"{len(lengths)} lengths for {b} rows")
            top = waves.shape[1]
            cut = [min(max(int(n), min(c.min_samples, top)), top) for n in lengths]
        for i, n in enumerate(cut):
            groups.setdefault(n, []).append(i)
        # cuDNN convs default to TF32 on recent GPUs; keep float32.
        no_tf32 = torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        with torch.inference_mode(), no_tf32:
            for n, rows in groups.items():
                for k in range(0, len(rows), self.chunk_rows):
                    idx = torch.tensor(rows[k : k + self.chunk_rows], device=self.device)
                    e, s = self.forward_rows(waves[idx, :n])
                    frames[idx, 0] = e
                    scores[idx, 0] = s
        return EncoderOutput(frames, scores)

    def place(self, device: str, channels_last: bool) -> "EfficientAT":
        """Move to ``device`` with the memory layout and step size that run fast there."""
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True
        if torch.device(device).type != "cpu":
            self.chunk_rows = ACCELERATOR_CHUNK_ROWS
        return self.to(device)

    def freeze(self) -> "EfficientAT":
        """Eval mode, no gradients: never trained here."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def load_checkpoint(self, state: Mapping[str, torch.Tensor], where: str) -> None:
        """Load an original-layout state dict (any float dtype, cast to float32); every key
        must match, each with its shape, else a one-line ModelNotFoundError."""
        own = self.net.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [
            k
            for k in own
            if k in state
            and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != own[k].shape)
        ]
        if missing or unexpected or bad:
            detail = "; ".join(
                f"{what} {len(keys)}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", bad),
                )
                if keys
            )
            raise ModelNotFoundError(f"{where}: not an EfficientAT mn04_as state dict ({detail})")
        self.net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )


# ---- weights and class list ----------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch ``.pt`` (read with weights_only=True)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"{path}: EfficientAT weight file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch, pickle and safetensors raise many types
        raise ModelNotFoundError(f"{path}: unreadable weight file ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def keeps_float32(key: str) -> bool:
    """Whether the shipped file keeps tensor ``key`` in float32: the convolutions and batch
    norms of ``features`` (0.28 M of the 0.99 M weights). In float16 their rounding moves the
    scores by up to 1e-2, well past the 1e-3 the port matches the original to; the squeeze-
    excitation gates and the classifier head round harmlessly (docs/experiments.md)."""
    return key.startswith("features.") and ".conc_se_layers." not in key


def write_safetensors(
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    dtype: torch.dtype = torch.float16,
    keep: Callable[[str], bool] = keeps_float32,
) -> None:
    """Save ``state`` as safetensors, floating tensors cast to ``dtype`` except those ``keep``
    names (left as they are); integer tensors (batch counts) are kept."""
    from safetensors.torch import save_file

    out = {
        k: (v.to(dtype) if v.is_floating_point() and not keep(k) else v).contiguous()
        for k, v in state.items()
    }
    save_file(out, str(path), metadata={"format": "pt", "model": "EfficientAT mn04_as"})


def class_map(csv_path: str | Path = SHIPPED_CLASSES) -> list[tuple[str, str]]:
    """(AudioSet mid, display name) of the 527 classes in score order, from
    class_labels_indices.csv (index,mid,display_name)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
        classes = [(r["mid"], r["display_name"]) for r in rows]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"{csv_path}: unreadable class list ({e!r})") from e
    if len(classes) != NUM_CLASSES:
        raise ModelNotFoundError(f"{csv_path}: {len(classes)} classes, expected {NUM_CLASSES}")
    return classes


def load_efficientat(
    weights: str | Path | None = None,
    device: str = "cpu",
    fused: bool = True,
    channels_last: bool = True,
) -> EfficientAT:
    """mn04_as from ``weights`` (None: the shipped float16 safetensors; else a ``.pt`` state
    dict as released or a ``.safetensors`` of ours), float32, frozen, on ``device``."""
    path = Path(weights) if weights else SHIPPED_WEIGHTS
    state = read_state_dict(path)
    config = dataclasses.replace(EfficientATConfig(), weights=file_sha256(path)[:16])
    model = EfficientAT(config, [name for _, name in class_map()])
    model.load_checkpoint(state, str(path))
    if fused:
        model.net.fuse()
    model.freeze().place(device, channels_last)
    return model


__all__ = [
    "EfficientAT",
    "EfficientATConfig",
    "KaldiLogMel",
    "MobileNetV3",
    "class_map",
    "kaldi_mel_banks",
    "keeps_float32",
    "load_efficientat",
    "read_state_dict",
    "write_safetensors",
]
