"""The audio-encoder interface: waves ``[B, N]`` at 16 kHz -> frame embeddings ``[B, T, D]``.

Every encoder here is a frozen CNN over 0.96 s log-mel patches (AudioSet family). The front
end, padding rule and batching live in :class:`AudioEncoder`; subclasses only map a batch of
patches ``[P, frames, bands]`` to embeddings ``[P, D]`` (and class scores where the model has
a classifier).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .frontend import LogMel, patches

# Patches per network call inside encode() on CPU. YAMNet's widest activation is
# 64 x 48 x 32 floats = 393 KB per patch; 32 patches (~13 MB) stay near cache. Measured on 2
# quiet cores (Xeon, torch 2.11, batch 16 x 10 s): 16 -> 484x, 32 -> 447x, 64 -> 409x,
# 128 -> 431x real time; on a loaded machine 512 ran 2.5x slower than 16-48.
DEFAULT_CHUNK_PATCHES = 32
# On a GPU there is no cache to fit and launches cost more than memory: big steps
# (4096 YAMNet patches ~ 1.6 GB of activations).
ACCELERATOR_CHUNK_PATCHES = 4096


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that changes an encoder's output; its fingerprint keys feature caches."""

    name: str
    dim: int
    sample_rate: int = 16000
    window_samples: int = 400  # 25 ms STFT window
    hop_samples: int = 160  # 10 ms STFT hop
    fft_length: int = 512  # next power of two above the window
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    log_offset: float = 0.001
    patch_frames: int = 96  # 0.96 s of 10 ms frames
    patch_hop_frames: int = 48
    # Shorter clips are zero-padded to this many samples: one patch needs
    # 0.96 + 0.025 - 0.010 s = 0.975 s -> 15600 samples (YAMNet's pad_waveform).
    min_samples: int = 15600
    # True: zero-pad the end up to a whole number of patch hops (YAMNet's pad_waveform);
    # False: drop the samples after the last whole patch (VGGish's framing).
    pad_to_hop: bool = True
    num_classes: int = 0
    weights: str = ""  # short sha256 of the weight file(s), so new weights mean new caches


class EncoderOutput(NamedTuple):
    """frames ``[B, T, D]``; scores ``[B, T, C]`` (sigmoid class scores) or None."""

    frames: torch.Tensor
    scores: torch.Tensor | None


class AudioEncoder(torch.nn.Module):
    """Base of the frozen encoders. Subclasses implement :meth:`forward_patches`."""

    accelerator_chunk_patches = ACCELERATOR_CHUNK_PATCHES

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogMel(
            config.sample_rate,
            config.window_samples,
            config.hop_samples,
            config.fft_length,
            config.mel_bands,
            config.mel_min_hz,
            config.mel_max_hz,
            config.log_offset,
        )
        self.chunk_patches = DEFAULT_CHUNK_PATCHES
        self.channels_last = False

    # ---- description -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_seconds(self) -> float:
        """Seconds between consecutive output frames (0.48 YAMNet, 0.96 VGGish)."""
        c = self.config
        return c.patch_hop_frames * c.hop_samples / c.sample_rate

    @property
    def device(self) -> torch.device:
        return self.frontend.mel_t.device

    def class_names(self) -> list[str]:
        """Display names of the ``scores`` classes; empty for encoders without a classifier."""
        return []

    # ---- lengths -----------------------------------------------------------------------
    def padded_samples(self, num_samples: int) -> int:
        """Length the waveform is padded (or, for VGGish, cut) to before framing."""
        c = self.config
        n = max(num_samples, c.min_samples)
        patch_hop_samples = c.patch_hop_frames * c.hop_samples
        hops = (n - c.min_samples) / patch_hop_samples
        hops = math.ceil(hops) if c.pad_to_hop else math.floor(hops)
        return c.min_samples + hops * patch_hop_samples

    def num_frames(self, seconds: float) -> int:
        """Number of output frames T for a clip of ``seconds`` (10 s -> 20 YAMNet, 10 VGGish)."""
        n = self.padded_samples(int(round(seconds * self.sample_rate)))
        c = self.config
        stft_frames = 1 + (n - c.window_samples) // c.hop_samples
        return 1 + (stft_frames - c.patch_frames) // c.patch_hop_frames

    # ---- computation -------------------------------------------------------------------
    def forward_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patches ``[P, 1, frames, bands]`` -> (embeddings ``[P, D]``, scores ``[P, C]`` or None)."""
        raise NotImplementedError

    def log_mel_patches(self, waves: torch.Tensor) -> torch.Tensor:
        """waves ``[B, N]`` -> padded log-mel patches ``[B, T, frames, bands]``."""
        n = waves.shape[-1]
        target = self.padded_samples(n)
        waves = F.pad(waves, (0, target - n)) if target > n else waves[:, :target]
        c = self.config
        return patches(self.frontend(waves), c.patch_frames, c.patch_hop_frames)

    def encode(self, waves: torch.Tensor | np.ndarray) -> EncoderOutput:
        """waves ``[B, N]`` float32 in [-1, 1] at 16 kHz (``[N]`` is taken as B = 1) ->
        frames ``[B, T, D]`` and scores ``[B, T, C]`` or None, on the encoder's device."""
        waves = torch.as_tensor(waves, dtype=torch.float32)
        if waves.ndim == 1:
            waves = waves[None]
        if waves.ndim != 2:
            raise ValueError(f"encode expects waves [B, N], got shape {tuple(waves.shape)}")
        c = self.config
        b, t = waves.shape[0], self.num_frames(waves.shape[1] / c.sample_rate)
        frames = torch.empty(b, t, c.dim, device=self.device)
        scores = torch.empty(b, t, c.num_classes, device=self.device) if c.num_classes else None
        # Whole clips per step, about chunk_patches patches each: the front end and every
        # activation of a step then stay in cache (measured 2.5x faster than 512 at once).
        step = max(1, self.chunk_patches // t)
        # cuDNN convs default to TF32 on recent GPUs (embeddings off by ~1e-2); keep float32.
        no_tf32 = torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
        with torch.inference_mode(), no_tf32:
            for i in range(0, b, step):
                p = self.log_mel_patches(
                    waves[i : i + step].to(self.device)
                )  # [g, T, frames, bands]
                flat = p.reshape(-1, 1, *p.shape[2:])  # [g*T, 1, frames, bands]
                if self.channels_last:
                    # Same memory as NCHW for one channel; the strides steer conv to its
                    # channels-last kernels.
                    flat = flat.contiguous(memory_format=torch.channels_last)
                e, s = self.forward_patches(flat)
                frames[i : i + step] = e.reshape(-1, t, c.dim)
                if scores is not None and s is not None:
                    scores[i : i + step] = s.reshape(-1, t, c.num_classes)
        return EncoderOutput(frames, scores)

    def place(self, device: str, channels_last: bool) -> "AudioEncoder":
        """Move to ``device`` with the memory layout and step size that run fast there."""
        if channels_last:
            # Channels-last lets oneDNN / cuDNN run the depthwise and 1x1 convs without
            # layout shuffles.
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True
        if torch.device(device).type != "cpu":
            self.chunk_patches = self.accelerator_chunk_patches
        return self.to(device)

    def freeze(self) -> "AudioEncoder":
        """Eval mode, no gradients: these encoders are never trained here."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self
