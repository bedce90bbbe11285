"""Log-mel front end shared by YAMNet and VGGish (models/research/audioset).

Both originals: 25 ms periodic-Hann frames every 10 ms, each zero-padded at its end to a
512-point FFT, magnitude spectrum, 64 HTK-mel bands over 125-7500 Hz with the DC bin given
zero weight, ``log(mel + offset)``, then framed into 96-frame (0.96 s) patches.
"""

from __future__ import annotations

import numpy as np
import torch


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale (as tf.signal and vggish mel_features): 1127 ln(1 + f / 700)."""
    # 1127 = 2595 / ln(10): HTK's 2595 log10(1 + f/700) with a natural log.
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(
    num_bins: int, num_spectrogram_bins: int, sample_rate: int, lower_hz: float, upper_hz: float
) -> np.ndarray:
    """Linear-to-mel weights ``[num_spectrogram_bins, num_bins]`` float32.

    The construction of tf.signal.linear_to_mel_weight_matrix (and vggish's
    spectrogram_to_mel_matrix): triangles with edges evenly spaced in mel, evaluated at the
    FFT bin centres; row 0 (the DC bin) is zero, as HTK excludes it.
    """
    bins_hz = np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins)
    bins_mel = hertz_to_mel(bins_hz)[:, None]  # [F, 1]
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_bins + 2)
    lower, center, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]  # [1, M]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights.astype(np.float32)


def periodic_hann(length: int) -> np.ndarray:
    """Periodic Hann window (tf.signal.hann_window default, vggish periodic_hann) float32 [L]."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)


class LogMel(torch.nn.Module):
    """waves ``[B, N]`` -> log-mel ``[B, F, M]`` with F = 1 + (N - window) // hop (no padding)."""

    window_t: torch.Tensor
    mel_t: torch.Tensor

    def __init__(
        self,
        sample_rate: int,
        window: int,
        hop: int,
        fft_length: int,
        mel_bands: int,
        mel_min_hz: float,
        mel_max_hz: float,
        log_offset: float,
    ) -> None:
        super().__init__()
        self.window, self.hop, self.fft_length, self.log_offset = (
            window,
            hop,
            fft_length,
            log_offset,
        )
        self.register_buffer("window_t", torch.from_numpy(periodic_hann(window)), persistent=False)
        mel = mel_matrix(mel_bands, fft_length // 2 + 1, sample_rate, mel_min_hz, mel_max_hz)
        self.register_buffer("mel_t", torch.from_numpy(mel), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        # Frame explicitly rather than torch.stft: torch centres a short window inside the
        # FFT frame, the originals put it at the start and zero-pad the end.
        frames = waves.unfold(-1, self.window, self.hop) * self.window_t  # [B, F, W]
        magnitude = torch.fft.rfft(frames, n=self.fft_length).abs()  # [B, F, fft/2+1]
        return torch.log(magnitude @ self.mel_t + self.log_offset)  # [B, F, M]


def patches(log_mel: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
    """log-mel ``[B, F, M]`` -> patches ``[B, T, frames, M]``, T = 1 + (F - frames) // hop (a view)."""
    return log_mel.unfold(1, frames, hop).transpose(2, 3)
