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
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from ..errors import (
    AudiocapError,
    AudioNotFoundError,
    EmptyAudioError,
    InvalidAudioError,
    TooShortAudioError,
    UnsupportedAudioError,
)

# YAMNet and VGGish were trained on 16 kHz mono log-mel patches; every encoder here takes it.
SAMPLE_RATE = 16000

# Extensions of the containers the bundled libsndfile (>= 1.1, see soundfile.available_formats())
# decodes: WAV/WAVEX/RF64/W64, FLAC, OGG (Vorbis, Opus), MP3 (MPEG-1/2 layer I-III), AIFF/AIFC,
# CAF, AU/SND, and a few legacy ones. Used to find audio files in directories; decoding itself
# trusts the file's content, not its name.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav",
    ".wave",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".mp2",
    ".mp1",
    ".aiff",
    ".aif",
    ".aifc",
    ".caf",
    ".au",
    ".snd",
    ".w64",
    ".rf64",
    ".voc",
    ".sd2",
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


def _wav_truncation(fd: int) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF WAV's data chunk when it is shorter than its
    header says, else None. libsndfile silently shortens such files to what is present.
    Reads with ``os.pread`` so that the offset of ``fd`` (shared with libsndfile) never moves."""
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 12, 0)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            cid, clen = struct.unpack("<4sI", os.pread(fd, 8, pos))
            if cid == b"data":
                present = size - (pos + 8)
                if clen not in _RIFF_UNKNOWN_SIZES and clen > present:
                    return clen, present
                return None
            pos += 8 + clen + (clen & 1)  # chunks are word-aligned
    except (OSError, struct.error):
        return None
    return None


_NOT_REGULAR = (
    (stat.S_ISDIR, "is a directory, not an audio file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def _check_regular(p: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        cause = next((c for test, c in _NOT_REGULAR if test(mode)), "not a regular file")
        raise AudioNotFoundError(p, cause)


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (symlinks followed), else raise
    :class:`AudioNotFoundError` with what it is.

    A FIFO with an audio name would block ``open`` forever (no writer), /dev/zero would never
    reach EOF, a socket cannot be opened: such paths are refused on ``os.stat`` before any
    open, and the open itself is non-blocking and re-checked with ``fstat``, so a file swapped
    for a FIFO in between cannot hang here either. (libsndfile then opens the path again by
    name, which it needs to recognise a tagless MP3: a swap in that instant is not covered.)
    Not covered either: a path on a stalled network mount, where ``stat`` itself sleeps in the
    kernel; no cheap user-space timeout ends that wait (a thread stuck there cannot be
    cancelled, and keeps the process from exiting).
    """
    p = Path(path)
    try:
        _check_regular(p, os.stat(p).st_mode)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:  # also a dangling symlink
        raise AudioNotFoundError(p, "file not found") from e
    except PermissionError as e:
        raise AudioNotFoundError(p, "permission denied") from e
    except OSError as e:  # e.g. a path name too long for the file system
        raise AudioNotFoundError(p, f"cannot access ({e.strerror or e})") from e
    try:
        _check_regular(p, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    """resample_poly's default anti-aliasing FIR (Kaiser beta 5, 10 zero crossings per side),
    designed once per rate pair: designing it costs more than filtering a 10 s clip."""
    max_rate = max(up, down)
    from scipy.signal import (
        firwin,
    )  # lazy: scipy.signal takes ~1 s to import, most clips need no resampling

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
    from scipy.signal import resample_poly

    return resample_poly(wave, up, down, window=_lowpass(up, down)).astype(np.float32, copy=False)


# Source frames decoded per read when streaming, at most: 1 Mi frames is 22 s at 48 kHz, 4 MiB as
# mono float32, large enough that per-read overhead is nil.
BLOCK_FRAMES = 1 << 20
# ... and at most this many bytes of decoded float32 [frames, channels] per read, so that memory
# does not grow with the channel count (1 Mi frames of 256 channels would be 1 GiB a block):
# mono and stereo keep 1 Mi frames, 256 channels get 8 Ki frames.
BLOCK_BYTES = 8 << 20

# Header values accepted. Rates: the lowest real audio rate in use is 8 kHz (telephony; 1 kHz
# leaves room for odd legacy files) and the highest any converter records is 768 kHz; a rate
# beyond would only be a corrupt header, and the resampler's filter grows with it (a 2 GHz rate
# asks scipy for a 298 GiB filter). Channels: 256 is more than any production format carries
# (Ambisonics of order 15 has 256; WAVEX allows 65535), and memory per frame grows with them.
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1000, 768000
MAX_CHANNELS = 256
# Shortest audio captioned: under 0.1 s (a click) there is nothing an encoder can hear, yet the
# model would still write a confident caption.
MIN_SECONDS = 0.1
# A declared frame count this large is libsndfile's "unknown length" (SF_COUNT_MAX, e.g. a FLAC
# whose STREAMINFO gives 0 total samples) or garbage: the length is then found by reading to EOF.
_UNKNOWN_FRAMES = 1 << 62
# Most windows a header's length may make room for up front (SegmentStream.expected): 2 h of
# 10 s windows; longer files grow their room as they are read.
_MAX_EXPECTED_WINDOWS = 720


class _Decoder:
    """One audio file open for decoding block by block to mono float32 at its own rate, with
    every check :func:`load` documents. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        p = self.path = Path(path)
        self._file = open_regular(p)  # refuses FIFOs, devices...; held for the WAV check
        try:
            # By name, not by descriptor: libsndfile recognises a tagless MP3 by its extension.
            self._snd = sf.SoundFile(str(p))
        except Exception as e:  # LibsndfileError, RuntimeError...: cffi may raise anything
            size = os.fstat(self._file.fileno()).st_size
            self._file.close()
            if isinstance(e, (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError)):
                detail = getattr(e, "error_string", "") or str(e).split(": ", 1)[-1]
                if "does not exist" in detail:  # libsndfile's words for some garbage input
                    detail = "unrecognised or corrupt data"
            else:
                detail = f"{type(e).__name__}: {e}"
            if size == 0:
                detail = "file is empty (0 bytes)"
            raise UnsupportedAudioError(p, f"not a readable audio file ({detail})") from e
        snd = self._snd
        self.rate, self.channels, self.format = snd.samplerate, snd.channels, snd.format
        # Frames the header declares, or None when unknown (see _UNKNOWN_FRAMES): never trusted
        # to size an allocation, only to stop reading and (crop) to give the duration.
        frames = snd.frames
        self.declared: int | None = frames if 0 <= frames < _UNKNOWN_FRAMES else None
        self.read = 0  # frames decoded so far
        self.eof = False  # True once the real end of the data was reached
        problem = None
        if self.rate <= 0:
            problem = InvalidAudioError(p, f"header gives an invalid sample rate ({self.rate} Hz)")
        elif not MIN_SOURCE_RATE <= self.rate <= MAX_SOURCE_RATE:
            problem = InvalidAudioError(
                p,
                f"header gives an unsupported sample rate ({self.rate} Hz; supported: "
                f"{MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz)",
            )
        elif self.channels <= 0:
            problem = EmptyAudioError(p, "has no audio channels")
        elif self.channels > MAX_CHANNELS:
            problem = UnsupportedAudioError(
                p, f"has {self.channels} channels (at most {MAX_CHANNELS} are supported)"
            )
        if problem is not None:
            self.close()
            raise problem

    def close(self) -> None:
        self._snd.close()
        self._file.close()

    def __enter__(self) -> "_Decoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, want: int) -> np.ndarray:
        """Up to ``want`` frames as float32 [n, C]. With an unknown length, by libsndfile's
        sf_readf_float directly: soundfile's ``read`` seeks after reading, which fails at the
        end of such a FLAC ("Internal psf_fseek() failed")."""
        if self.declared is not None:
            return self._snd.read(want, dtype="float32", always_2d=True)
        out = np.empty((want, self.channels), dtype=np.float32)
        lib, handle = sf._snd, self._snd._file  # type: ignore[attr-defined]
        got = lib.sf_readf_float(handle, sf._ffi.cast("float *", out.ctypes.data), want)  # type: ignore[attr-defined]
        if got < want and (err := lib.sf_error(handle)):
            raise sf.LibsndfileError(err)
        return out[:got]

    def blocks(self, limit: int | None = None, block: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Mono float32 blocks of up to ``block`` frames (fewer with many channels: at most
        :data:`BLOCK_BYTES` decoded per read), in order, until ``limit`` frames or the end the
        header declares (the length :func:`load` has always used), or EOF when the header gives
        none. Reaching the end runs the truncation checks; stopping at ``limit`` runs only the
        header's."""
        block = max(1, min(block, BLOCK_BYTES // (4 * self.channels)))
        end = self.declared if self.declared is not None else _UNKNOWN_FRAMES
        if limit is not None:
            end = min(limit, end)
        short = False
        while self.read < end and not short:
            want = min(block, end - self.read)
            try:
                data = self._read(want)  # [n, C]
            except Exception as e:  # LibsndfileError mid-stream (truncated FLAC...), MemoryError...
                detail = getattr(e, "error_string", "") or str(e) or type(e).__name__
                raise InvalidAudioError(
                    self.path, f"decoding failed partway: truncated or corrupt data ({detail})"
                ) from e
            got = data.shape[0]
            short = got < want  # decoded less than declared: the real end
            if got:
                wave = data.mean(axis=1, dtype=np.float32) if self.channels > 1 else data[:, 0]
                del data
                if not np.isfinite(wave).all():
                    bad = int((~np.isfinite(wave)).sum())
                    where = f" in the block at {self.read / self.rate:.1f} s" if self.read else ""
                    raise InvalidAudioError(
                        self.path, f"contains {bad} NaN or infinite sample(s){where}"
                    )
                self.read += got
                yield wave
        self.eof = short or end == self.declared
        self._check(full=self.eof)

    def _check(self, full: bool) -> None:
        p, read, declared = self.path, self.read, self.declared
        if full and read == 0:
            raise EmptyAudioError(p, "decodes to zero samples (empty or truncated)")
        if self.format == "WAV":
            cut = _wav_truncation(self._file.fileno())
            if cut is not None:
                raise InvalidAudioError(
                    p, f"truncated: header declares {cut[0]} bytes of samples, file holds {cut[1]}"
                )
        elif full and declared is not None and self.format in ("MPEG", "MP3"):
            short = declared - read
            if short > max(
                _LOSSY_SHORTFALL_FRACTION * declared, _LOSSY_SHORTFALL_SECONDS * self.rate
            ):
                raise InvalidAudioError(
                    p, f"truncated: header declares {declared} frames, only {read} decode"
                )
        if full and read < MIN_SECONDS * self.rate:  # after the checks that say why
            raise TooShortAudioError(
                p, f"audio too short to caption ({read / self.rate:.3g} s < {MIN_SECONDS:g} s)"
            )


def _check_rate(p: Path, sample_rate: int) -> None:
    if sample_rate <= 0:
        raise InvalidAudioError(p, f"requested sample rate must be positive, got {sample_rate}")


def load(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 ``[N]`` at ``sample_rate``.

    Channels are averaged; any bit depth (8/16/24/32-bit int, float, double) is scaled to
    [-1, 1] full scale by libsndfile; any source rate is resampled with a polyphase filter
    (``scipy.signal.resample_poly`` with gcd-reduced up/down factors, N_out = ceil(N*up/down)).
    Holds the whole file in memory: for long files use :class:`SegmentStream`.

    Raises AudioNotFoundError (missing path, directory, FIFO, device, socket: anything but a
    regular file, refused before it is opened), UnsupportedAudioError (not audio, unknown or
    malformed header), EmptyAudioError (zero frames or channels) or InvalidAudioError
    (truncated data, undecodable data, NaN/inf samples, zero sample rate).
    """
    p = Path(path)
    _check_rate(p, sample_rate)
    with _Decoder(p) as dec:
        parts = list(dec.blocks())
    wave = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.ascontiguousarray(resample(wave, dec.rate, sample_rate), dtype=np.float32)


def resample_stream(
    blocks: Iterable[np.ndarray], orig_rate: int, new_rate: int
) -> Iterator[np.ndarray]:
    """:func:`resample` of consecutive blocks, streamed: yields consecutive pieces whose
    concatenation is bit-identical to ``resample(np.concatenate(blocks), ...)``, holding only
    a block plus the filter's reach (10 x max(up, down) / up source samples each side).

    Output j depends on source samples i with |i*up - j*down| <= half (the filter's half
    length); a piece holds the outputs whose support has been read, computed by resampling
    from a source offset that is a multiple of ``down`` (so the polyphase phases, taps and
    summation order are those of the one-shot call)."""
    if orig_rate == new_rate:
        yield from blocks
        return
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    half = 10 * max(up, down)  # _lowpass's half length
    buf, buf0 = np.zeros(0, dtype=np.float32), 0  # held source samples; buf0: index of buf[0]
    total = done = 0  # source samples seen, output samples yielded

    def piece(stop: int) -> np.ndarray:
        nonlocal buf, buf0, done
        first = max(0, -((half - done * down) // up))  # ceil((done*down - half) / up)
        s0 = first // down * down
        out = resample(buf[s0 - buf0 :], orig_rate, new_rate)[
            done - s0 // down * up : stop - s0 // down * up
        ]
        done = stop
        nxt = max(0, -((half - done * down) // up)) // down * down
        buf, buf0 = buf[nxt - buf0 :], nxt
        return out

    for block in blocks:
        buf = np.concatenate((buf, np.asarray(block, dtype=np.float32)))
        total += len(block)
        stop = ((total - 1) * up - half) // down + 1 if total else 0
        if stop > done:
            yield piece(stop)
    end = -(-total * up // down)
    if end > done:
        yield piece(end)


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
            problems.append(
                f"long_audio must be one of {', '.join(_LONG_AUDIO)}, got {self.long_audio!r}"
            )
        if self.hop_seconds is not None and not (
            math.isfinite(self.hop_seconds) and self.hop_seconds > 0
        ):
            problems.append(f"hop seconds must be > 0, got {self.hop_seconds}")
        if not (math.isfinite(self.min_tail_seconds) and self.min_tail_seconds >= 0):
            problems.append(f"min tail seconds must be >= 0, got {self.min_tail_seconds}")
        if problems:
            raise AudiocapError("invalid clip policy: " + "; ".join(problems))

    @property
    def hop(self) -> float:
        return self.seconds if self.hop_seconds is None else self.hop_seconds


def window_starts(
    num_samples: int, policy: ClipPolicy, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
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


def _expected(dec: _Decoder, policy: ClipPolicy, sr: int, at_most: int) -> int:
    """Windows the header's length gives at ``sr`` (exact but for an MP3's estimate; 1 when the
    header gives no length), at most about ``at_most``: the header's length is never trusted to
    size anything (an MP3's Xing frame count can lie)."""
    n = round(policy.seconds * sr)
    hop = max(1, round(policy.hop * sr))
    g = math.gcd(dec.rate, sr)
    hint = -(-(dec.declared or 0) * (sr // g) // (dec.rate // g))
    return len(window_starts(min(hint, at_most * hop + n), policy, sr))


def expected_windows(
    path: str | Path, policy: ClipPolicy, sample_rate: int = SAMPLE_RATE, at_most: int = 720
) -> int:
    """:attr:`SegmentStream.expected` of ``path`` from its header alone (nothing is decoded),
    at most about ``at_most``; raises the file's AudioError when it cannot be opened."""
    _check_rate(Path(path), sample_rate)
    with _Decoder(path) as dec:
        return _expected(dec, policy, sample_rate, at_most)


class SegmentStream:
    """The windows :func:`segments` cuts from ``load(path, sample_rate)``, decoded, resampled
    and cut block by block: memory holds about a block and a window, whatever the length.

    Iterate for the windows (float32 ``[round(seconds*sample_rate)]``, in order, values
    identical to ``segments(load(path))``); after the loop ``starts``, ``ends`` (seconds, as
    ``segments`` gives them) and ``duration`` (seconds) are set. ``expected``, the number of
    windows the header's length gives (exact but for an MP3's estimate), is set before the
    first window is yielded; ``start`` (its first sample at ``sample_rate``) and ``length``
    (samples of real audio) describe the window just yielded. Raises the file's AudioError,
    possibly after some windows were yielded (a file corrupt near its end).

    With ``long_audio="crop"`` only the source frames the first window needs are decoded
    (its length plus the resampler's reach): a 10-hour file costs what a 10 s one does. The
    duration then comes from the header (an MP3's is an estimate within a few %), and damage
    past the window (a cut FLAC or MP3) goes unseen; a WAV's header is still checked.
    """

    def __init__(
        self,
        path: str | Path,
        policy: ClipPolicy,
        sample_rate: int = SAMPLE_RATE,
        block: int = BLOCK_FRAMES,
    ) -> None:
        self.path, self.policy, self.sample_rate, self.block = (
            Path(path),
            policy,
            sample_rate,
            block,
        )
        self.starts: tuple[float, ...] = ()
        self.ends: tuple[float, ...] = ()
        self.duration = 0.0
        self.expected = 1  # windows the header promises; set before the first is yielded
        self.start = 0  # first sample of the window just yielded (its start: start / sample_rate)
        self.length = 0  # samples of real audio in the window just yielded (the rest is padding)

    def __iter__(self) -> Iterator[np.ndarray]:
        p, policy, sr = self.path, self.policy, self.sample_rate
        _check_rate(p, sr)
        n = round(policy.seconds * sr)
        hop = max(1, round(policy.hop * sr))
        min_new = max(1, round(policy.min_tail_seconds * sr))
        with _Decoder(p) as dec:
            g = math.gcd(dec.rate, sr)
            up, down = sr // g, dec.rate // g
            # The header's length only sizes room for features (which grows past it), so it
            # is bounded: a lying header (an MP3's Xing frame count) cannot size an allocation.
            self.expected = _expected(dec, policy, sr, _MAX_EXPECTED_WINDOWS)
            limit = None
            # crop: source frames whose outputs settle [0, n); with no length in the header,
            # the whole file is read (and discarded past the window) to find its duration.
            if policy.long_audio == "crop" and dec.declared is not None:
                limit = 1 + -(-((n - 1) * down + 10 * max(up, down)) // up)
            buf, buf0, total, k = np.zeros(0, dtype=np.float32), 0, 0, 0  # k: windows yielded
            last = 1 if policy.long_audio == "crop" else None  # windows known up front
            for piece in resample_stream(dec.blocks(limit, self.block), dec.rate, sr):
                total += len(piece)
                if k == last:
                    continue  # crop: only the length matters from here on
                buf = np.concatenate((buf, piece))  # samples [buf0, total)
                # Window k is certain once it is full and (k > 0) adds min_new samples beyond
                # what window k-1 covered: a later end can only keep it (see window_starts).
                while (
                    k != last
                    and (start := k * hop) + n <= total
                    and (k == 0 or total - max(start, start - hop + n) >= min_new)
                ):
                    self.start, self.length = start, n
                    yield buf[start - buf0 : start - buf0 + n].copy()
                    k += 1
                    keep = min(k * hop, total)
                    buf, buf0 = buf[keep - buf0 :], keep
            eof, declared = dec.eof, dec.declared
        if not eof:  # crop stopped early: the header gives the length
            assert declared is not None and limit is not None
            total = max(total, -(-max(declared, limit) * up // down))
        starts = window_starts(total, policy, sr)
        assert k <= len(starts), "a window was yielded that the file's end would drop"
        for s in starts[k:].tolist():
            w = np.zeros(n, dtype=np.float32)
            real = buf[s - buf0 : s - buf0 + n]
            w[: len(real)] = real
            self.start, self.length = s, len(real)
            yield w
        self.starts = tuple(float(s) / sr for s in starts.tolist())
        self.ends = tuple(float(min(s + n, total)) / sr for s in starts.tolist())
        self.duration = total / sr
