"""Audio front end: decode any file libsndfile reads to mono float32 at a fixed rate, and cut
it into the fixed-length windows the encoders expect.

Knows nothing about models. Every failure is a typed :class:`~audiocap_cli.errors.AudioError`
(with the path and the cause), never a raw soundfile/numpy traceback.

Amplitude policy: samples are returned as decoded, **not clipped** to [-1, 1]. Float WAVs may
legitimately exceed full scale, lossy decoders (Vorbis, MP3) overshoot by a few percent (41 of
the 108 tuxpaint .ogg files peak above 1.0, up to 1.34) and so does polyphase resampling;
clipping would add distortion the encoders never saw in training, whereas a log-mel front end
is indifferent to a slight overshoot. Only non-finite samples are rejected.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import firwin, resample_poly

from .errors import (
    AudiocapError,
    AudioNotFoundError,
    EmptyAudioError,
    InvalidAudioError,
    UnsupportedAudioError,
)

# YAMNet and VGGish were trained on 16 kHz mono log-mel patches; every encoder here takes it.
SAMPLE_RATE = 16000

# Extensions of the containers the bundled libsndfile (>= 1.1, see soundfile.available_formats())
# decodes: WAV/WAVEX/RF64/W64, FLAC, OGG (Vorbis, Opus), MP3 (MPEG-1/2 layer I-III), AIFF/AIFC,
# CAF, AU/SND, and a few legacy ones. Used to find audio files in directories; decoding itself
# trusts the file's content, not its name.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2", ".mp1",
    ".aiff", ".aif", ".aifc", ".caf", ".au", ".snd", ".w64", ".rf64", ".voc", ".sd2",
)

# MP3 headers declare a length (Xing/LAME tag or a bitrate estimate) that differs from what
# decodes by the encoder delay/padding plus estimation error: up to 2.2 % (50 ms) on the shared
# dev mp3s. A shortfall above both bounds below means the file was cut (a half-downloaded mp3
# decodes ~60 % short), so it is rejected instead of silently captioning a fragment.
_LOSSY_SHORTFALL_FRACTION = 0.05
_LOSSY_SHORTFALL_SECONDS = 0.5
# RIFF size fields that writers use for "unknown length" when streaming (ffmpeg to a pipe, crashed
# recorders); such files are not truncated in any sense we can check.
_RIFF_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def _wav_truncation(path: Path) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF WAV's data chunk when it is shorter than its
    header says, else None. libsndfile silently shortens such files to what is present."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, clen = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    present = size - (pos + 8)
                    if clen not in _RIFF_UNKNOWN_SIZES and clen > present:
                        return clen, present
                    return None
                pos += 8 + clen + (clen & 1)  # chunks are word-aligned
    except OSError:
        return None
    return None


@lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    """resample_poly's default anti-aliasing FIR (Kaiser beta 5, 10 zero crossings per side),
    designed once per rate pair: designing it costs more than filtering a 10 s clip."""
    max_rate = max(up, down)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)
    h.flags.writeable = False  # shared between calls; resample_poly copies it
    return h


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling of float32 [N] to [ceil(N*up/down)], up/down = gcd-reduced rates;
    identical to ``scipy.signal.resample_poly`` with its default window."""
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    return resample_poly(wave, up, down, window=_lowpass(up, down)).astype(np.float32, copy=False)


def load(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 ``[N]`` at ``sample_rate``.

    Channels are averaged; any bit depth (8/16/24/32-bit int, float, double) is scaled to
    [-1, 1] full scale by libsndfile; any source rate is resampled with a polyphase filter
    (``scipy.signal.resample_poly`` with gcd-reduced up/down factors, N_out = ceil(N*up/down)).

    Raises AudioNotFoundError (missing path, directory), UnsupportedAudioError (not audio,
    unknown or malformed header), EmptyAudioError (zero frames or channels) or
    InvalidAudioError (truncated data, undecodable data, NaN/inf samples, zero sample rate).
    """
    p = Path(path)
    if sample_rate <= 0:
        raise InvalidAudioError(p, f"requested sample rate must be positive, got {sample_rate}")
    try:
        if not p.exists():
            raise AudioNotFoundError(p, "file not found")
        if p.is_dir():
            raise AudioNotFoundError(p, "is a directory, not an audio file")
        if not p.is_file():
            raise AudioNotFoundError(p, "not a regular file")
        if not os.access(p, os.R_OK):
            raise AudioNotFoundError(p, "permission denied")
    except OSError as e:  # e.g. a path name too long for the file system
        raise AudioNotFoundError(p, f"cannot access ({e.strerror or e})") from e

    try:
        snd = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as e:
        detail = getattr(e, "error_string", "") or str(e).split(": ", 1)[-1]
        if "does not exist" in detail:  # libsndfile's words for some garbage input; it exists
            detail = "unrecognised or corrupt data"
        if p.stat().st_size == 0:
            detail = "file is empty (0 bytes)"
        raise UnsupportedAudioError(p, f"not a readable audio file ({detail})") from e
    except Exception as e:  # cffi/soundfile may raise anything on exotic input; never leak it
        raise UnsupportedAudioError(p, f"not a readable audio file ({type(e).__name__}: {e})") from e

    with snd:
        rate, channels, declared, fmt = snd.samplerate, snd.channels, snd.frames, snd.format
        if rate <= 0:
            raise InvalidAudioError(p, f"header gives an invalid sample rate ({rate} Hz)")
        if channels <= 0:
            raise EmptyAudioError(p, "has no audio channels")
        try:
            data = snd.read(dtype="float32", always_2d=True)  # [N, C]
        except Exception as e:  # LibsndfileError mid-stream (truncated FLAC...), MemoryError...
            detail = getattr(e, "error_string", "") or str(e) or type(e).__name__
            raise InvalidAudioError(p, f"decoding failed partway: truncated or corrupt data ({detail})") from e

    if data.shape[0] == 0:
        raise EmptyAudioError(p, "decodes to zero samples (empty or truncated)")
    if fmt == "WAV":
        cut = _wav_truncation(p)
        if cut is not None:
            raise InvalidAudioError(p, f"truncated: header declares {cut[0]} bytes of samples, file holds {cut[1]}")
    elif fmt == "MPEG" or fmt == "MP3":
        short = declared - data.shape[0]
        if short > max(_LOSSY_SHORTFALL_FRACTION * declared, _LOSSY_SHORTFALL_SECONDS * rate):
            raise InvalidAudioError(
                p, f"truncated: header declares {declared} frames, only {data.shape[0]} decode"
            )

    wave = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise InvalidAudioError(p, f"contains {bad} NaN or infinite sample(s)")
    wave = resample(wave, rate, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


_LONG_AUDIO = ("crop", "windows")


@dataclass(frozen=True)
class ClipPolicy:
    """How a file of any length becomes fixed-length encoder inputs (the paper, like AudioCaps,
    assumes equal-length clips).

    seconds: window length. 10 s matches AudioCaps clips (Clotho files run 15-30 s).
    long_audio: "crop" keeps only the first window (the paper's setting); "windows" covers the
        whole file with consecutive windows ``hop_seconds`` apart.
    hop_seconds: window step for "windows"; None means ``seconds`` (no overlap).
    min_tail_seconds: with "windows", a last window adding less than this much audio not already
        covered is dropped (it would be mostly zero padding, and a frame-level encoder needs about
        one ~1 s analysis patch to say anything). The first window is always kept.

    Audio shorter than ``seconds`` is zero-padded at the end, in both modes.
    """

    seconds: float = 10.0
    long_audio: str = "crop"
    hop_seconds: float | None = None
    min_tail_seconds: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            problems.append(f"clip seconds must be > 0, got {self.seconds}")
        if self.long_audio not in _LONG_AUDIO:
            problems.append(f"long_audio must be one of {', '.join(_LONG_AUDIO)}, got {self.long_audio!r}")
        if self.hop_seconds is not None and not (math.isfinite(self.hop_seconds) and self.hop_seconds > 0):
            problems.append(f"hop seconds must be > 0, got {self.hop_seconds}")
        if not (math.isfinite(self.min_tail_seconds) and self.min_tail_seconds >= 0):
            problems.append(f"min tail seconds must be >= 0, got {self.min_tail_seconds}")
        if problems:
            raise AudiocapError("invalid clip policy: " + "; ".join(problems))

    @property
    def hop(self) -> float:
        return self.seconds if self.hop_seconds is None else self.hop_seconds


def window_starts(num_samples: int, policy: ClipPolicy, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Start sample of every window ``segments`` yields for a wave of ``num_samples``: int64 [W]."""
    n = round(policy.seconds * sample_rate)
    if policy.long_audio == "crop" or num_samples <= n:
        return np.zeros(1, dtype=np.int64)
    hop = max(1, round(policy.hop * sample_rate))
    # Window k>0 is needed while the windows before it stop short of the end; ``covered`` is
    # where the new audio of window k begins (the end of window k-1, or its own start when
    # hop > seconds leaves gaps), so window k adds num_samples - covered new samples.
    starts = np.arange(0, num_samples, hop, dtype=np.int64)
    covered = np.maximum(starts, np.concatenate(([0], starts[:-1] + n)))
    new = num_samples - covered
    keep = new > 0
    keep[1:] &= new[1:] >= max(1, round(policy.min_tail_seconds * sample_rate))
    keep[0] = True
    # Windows are monotone, so the kept ones are a prefix.
    return starts[: int(np.argmin(keep)) if not keep.all() else len(starts)]


def segments(
    wave: np.ndarray, policy: ClipPolicy, sample_rate: int = SAMPLE_RATE
) -> list[tuple[float, float, np.ndarray]]:
    """Cut ``wave`` [N] into fixed-length windows per ``policy``.

    Returns ``[(start_s, end_s, window [round(seconds*sample_rate)] float32), ...]``, at least one
    entry; ``end_s`` is where the real audio in the window ends (before padding), so a 3 s file
    with a 10 s policy gives ``[(0.0, 3.0, wave + 7 s of zeros)]``. An empty wave gives one
    all-zero window (0.0, 0.0). See :class:`ClipPolicy` for the crop/windows rules.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n = round(policy.seconds * sample_rate)
    total = wave.shape[0]
    starts = window_starts(total, policy, sample_rate)
    need = int(starts[-1]) + n
    padded = np.zeros(max(need, total), dtype=np.float32)
    padded[:total] = wave
    # Gather all windows in one indexing op: [W, n] (a copy, so each row is contiguous).
    windows = np.lib.stride_tricks.sliding_window_view(padded, n)[starts]
    ends = np.minimum(starts + n, total)
    return [
        (float(s) / sample_rate, float(e) / sample_rate, windows[i])
        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist()))
    ]
