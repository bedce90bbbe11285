"""audio.py: decoding of every format/bit depth/rate, typed errors for broken input, windows."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiocap_cli.audio import io as audio
from audiocap_cli.audio.io import SAMPLE_RATE, ClipPolicy, load, segments
from audiocap_cli.errors import (
    AudiocapError,
    AudioError,
    AudioNotFoundError,
    EmptyAudioError,
    InvalidAudioError,
    UnsupportedAudioError,
)

SOUNDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sounds"


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "fmt,subtype,ext",
    [
        ("WAV", "PCM_16", ".wav"),
        ("WAV", "PCM_24", ".wav"),
        ("WAV", "PCM_32", ".wav"),
        ("WAV", "PCM_U8", ".wav"),
        ("WAV", "FLOAT", ".wav"),
        ("WAV", "DOUBLE", ".wav"),
        ("FLAC", "PCM_24", ".flac"),
        ("AIFF", "PCM_16", ".aiff"),
        ("OGG", "VORBIS", ".ogg"),
        ("MP3", "MPEG_LAYER_III", ".mp3"),
    ],
)
def test_formats_and_bit_depths_decode_to_the_same_tone(
    tmp_path: Path, fmt: str, subtype: str, ext: str
) -> None:
    x = _sine(1000.0, SAMPLE_RATE, 1.0)
    p = tmp_path / f"tone{ext}"
    sf.write(p, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    y = load(p)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) <= (0 if fmt in ("WAV", "FLAC", "AIFF") else 2400)
    assert abs(_peak_hz(y, SAMPLE_RATE) - 1000.0) < 2.0
    # Full scale is kept: a 0.5 sine decodes to RMS 0.5/sqrt(2) whatever the bit depth.
    rms = float(np.sqrt(np.mean(y[2000:-2000] ** 2)))
    assert rms == pytest.approx(0.5 / math.sqrt(2), rel=0.05)
    if fmt in ("WAV", "FLAC", "AIFF") and subtype != "PCM_U8":
        np.testing.assert_allclose(y, x, atol=1e-4 if subtype != "PCM_16" else 1e-4)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 22254, 96000])
def test_resampling_length_and_pitch(tmp_path: Path, rate: int) -> None:
    p = tmp_path / "r.wav"
    seconds = 1.5
    sf.write(p, _sine(440.0, rate, seconds), rate, subtype="PCM_24")
    y = load(p)
    n_in = round(rate * seconds)
    g = math.gcd(rate, SAMPLE_RATE)
    # resample_poly's output length: ceil(N * up / down).
    assert len(y) == math.ceil(n_in * (SAMPLE_RATE // g) / (rate // g))
    assert abs(_peak_hz(y, SAMPLE_RATE) - 440.0) < 1.0
    # Amplitude preserved away from the edges (the polyphase filter's passband is flat).
    assert float(np.abs(y[4000:-4000]).max()) == pytest.approx(0.5, rel=0.02)


def test_other_target_rate_and_same_rate_is_untouched(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    x = _sine(300.0, 16000, 0.5)
    sf.write(p, x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load(p), x)  # no resampling, bit-exact float
    assert len(load(p, sample_rate=32000)) == 2 * len(x)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left = _sine(500.0, SAMPLE_RATE, 0.5)
    right = np.full_like(left, 0.25)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load(p), (left + right) / 2, atol=1e-7)


def test_float_wav_above_full_scale_is_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "loud.wav"
    x = _sine(200.0, SAMPLE_RATE, 0.5, amp=1.5)
    sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
    assert float(np.abs(load(p)).max()) == pytest.approx(1.5, rel=1e-3)


def test_audio_extensions_cover_what_libsndfile_reads() -> None:
    fmts = sf.available_formats()
    for name, ext in [
        ("WAV", ".wav"),
        ("FLAC", ".flac"),
        ("OGG", ".ogg"),
        ("MP3", ".mp3"),
        ("AIFF", ".aiff"),
    ]:
        assert name in fmts
        assert ext in audio.AUDIO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in audio.AUDIO_EXTENSIONS)


# ----------------------------------------------------------------------------- broken inputs


def _wav_bytes(tmp_path: Path, n: int = 16000, subtype: str = "PCM_16") -> bytes:
    p = tmp_path / "_src.wav"
    sf.write(p, _sine(440.0, SAMPLE_RATE, n / SAMPLE_RATE), SAMPLE_RATE, subtype=subtype)
    return p.read_bytes()


def _broken_corpus(tmp_path: Path) -> dict[str, tuple[Path, type[AudioError]]]:
    d = tmp_path / "broken"
    d.mkdir()
    good = _wav_bytes(tmp_path)
    out: dict[str, tuple[Path, type[AudioError]]] = {}

    def put(name: str, data: bytes, err: type[AudioError]) -> None:
        (d / name).write_bytes(data)
        out[name] = (d / name, err)

    put("empty.wav", b"", UnsupportedAudioError)
    put("header_only_20_bytes.wav", good[:20], UnsupportedAudioError)
    put("riff_only.wav", good[:12], UnsupportedAudioError)
    put("truncated_data.wav", good[:1000], InvalidAudioError)
    put("text.wav", b"this is not audio\n" * 20, UnsupportedAudioError)
    put("random.mp3", np.random.default_rng(0).bytes(4096), UnsupportedAudioError)
    put("random.ogg", np.random.default_rng(1).bytes(4096), UnsupportedAudioError)
    put("random.flac", np.random.default_rng(2).bytes(4096), UnsupportedAudioError)
    put("zeros.wav", bytes(4096), UnsupportedAudioError)
    put("json.flac", b'{"not": "audio"}', UnsupportedAudioError)

    nan = _sine(440.0, SAMPLE_RATE, 0.1)
    nan[10] = np.nan
    sf.write(d / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    out["nan.wav"] = (d / "nan.wav", InvalidAudioError)
    inf = _sine(440.0, SAMPLE_RATE, 0.1).astype(np.float64)
    inf[3] = np.inf
    sf.write(d / "inf.wav", inf, SAMPLE_RATE, subtype="DOUBLE")
    out["inf.wav"] = (d / "inf.wav", InvalidAudioError)

    sf.write(d / "zero_samples.wav", np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    out["zero_samples.wav"] = (d / "zero_samples.wav", EmptyAudioError)

    # Sample rate field (bytes 24..28 of a canonical WAV header) set to 0.
    zr = bytearray(good)
    assert zr[12:16] == b"fmt "
    zr[24:28] = struct.pack("<I", 0)
    put("zero_rate.wav", bytes(zr), UnsupportedAudioError)  # libsndfile refuses the header

    # Channel count field (bytes 22..24) set to 0.
    zc = bytearray(good)
    zc[22:24] = struct.pack("<H", 0)
    put("zero_channels.wav", bytes(zc), UnsupportedAudioError)

    # Truncated compressed streams.
    sf.write(d / "_full.flac", _sine(440.0, SAMPLE_RATE, 2.0), SAMPLE_RATE)
    full = (d / "_full.flac").read_bytes()
    put("truncated.flac", full[: len(full) // 2], InvalidAudioError)
    sf.write(d / "_full.mp3", _sine(440.0, SAMPLE_RATE, 2.0), SAMPLE_RATE)
    full = (d / "_full.mp3").read_bytes()
    put("truncated.mp3", full[: len(full) // 3], InvalidAudioError)
    # A cut Ogg stream loses its last page (libsndfile then finds no length: zero samples) or,
    # cut earlier, the stream headers (malformed).
    sf.write(d / "_full.ogg", _sine(440.0, SAMPLE_RATE, 5.0), SAMPLE_RATE)
    full = (d / "_full.ogg").read_bytes()
    put("truncated_late.ogg", full[: len(full) * 4 // 5], EmptyAudioError)
    put("truncated_early.ogg", full[: len(full) * 3 // 10], UnsupportedAudioError)

    (d / "a_directory.wav").mkdir()
    out["a_directory.wav"] = (d / "a_directory.wav", AudioNotFoundError)
    out["missing.wav"] = (d / "missing.wav", AudioNotFoundError)
    (d / "dangling.wav").symlink_to(d / "nowhere.wav")
    out["dangling.wav"] = (d / "dangling.wav", AudioNotFoundError)
    return out


def test_every_broken_input_gives_its_typed_error(tmp_path: Path) -> None:
    corpus = _broken_corpus(tmp_path)
    wrong = {}
    for name, (path, err) in corpus.items():
        try:
            load(path)
        except AudioError as e:
            # One line, naming the file and a cause.
            assert "\n" not in str(e) and str(path) in str(e) and e.cause, name
            if type(e) is not err:
                wrong[name] = f"{type(e).__name__} ({e.cause}), expected {err.__name__}"
        else:
            wrong[name] = f"decoded, expected {err.__name__}"
    assert not wrong, wrong


def test_unreadable_file_is_typed(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    p = tmp_path / "locked.wav"
    p.write_bytes(_wav_bytes(tmp_path))
    p.chmod(0)
    try:
        with pytest.raises(AudioNotFoundError, match="permission"):
            load(p)
    finally:
        p.chmod(0o644)


def test_streamed_wav_with_unknown_data_size_is_accepted(tmp_path: Path) -> None:
    """ffmpeg writing to a pipe leaves 0xFFFFFFFF in the size fields; that is not truncation."""
    data = bytearray(_wav_bytes(tmp_path, n=8000))
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    p = tmp_path / "streamed.wav"
    p.write_bytes(bytes(data))
    assert len(load(p)) == 8000


def test_bad_target_rate() -> None:
    with pytest.raises(InvalidAudioError):
        load("whatever.wav", sample_rate=0)


@pytest.mark.slow
def test_every_shared_sound_decodes() -> None:
    if not SOUNDS.is_dir():
        pytest.skip(f"dev data not present at {SOUNDS}")
    files = sorted(p for p in SOUNDS.rglob("*") if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
    by_ext: dict[str, int] = {}
    for p in files:
        y = load(p)
        assert y.dtype == np.float32 and y.ndim == 1 and len(y) > 0, p
        assert np.isfinite(y).all(), p
        info = sf.info(str(p))
        # Length matches the decoded duration (mp3 headers declare approximate lengths).
        assert abs(len(y) / SAMPLE_RATE - info.frames / info.samplerate) < 0.2, p
        by_ext[p.suffix.lower()] = by_ext.get(p.suffix.lower(), 0) + 1
    assert by_ext.get(".ogg") == 108
    assert by_ext.get(".mp3", 0) >= 50
    assert by_ext.get(".wav", 0) >= 200  # 24-bit tau scenes


# ----------------------------------------------------------------------------- clip policy


def _ramp(seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    return (np.arange(round(seconds * sr)) + 1).astype(np.float32)


def test_short_audio_is_zero_padded() -> None:
    x = _ramp(3.0)
    [(s, e, w)] = segments(x, ClipPolicy(seconds=10.0))
    assert (s, e) == (0.0, 3.0)
    assert w.shape == (160000,) and w.dtype == np.float32
    np.testing.assert_array_equal(w[:48000], x)
    assert not w[48000:].any()


def test_crop_keeps_first_window() -> None:
    x = _ramp(25.0)
    [(s, e, w)] = segments(x, ClipPolicy(seconds=10.0, long_audio="crop"))
    assert (s, e) == (0.0, 10.0)
    np.testing.assert_array_equal(w, x[:160000])


def test_windows_cover_the_file_and_pad_the_last() -> None:
    x = _ramp(25.0)
    segs = segments(x, ClipPolicy(seconds=10.0, long_audio="windows"))
    assert [(s, e) for s, e, _ in segs] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    np.testing.assert_array_equal(segs[1][2], x[160000:320000])
    np.testing.assert_array_equal(segs[2][2][:80000], x[320000:])
    assert not segs[2][2][80000:].any()
    assert all(w.shape == (160000,) for _, _, w in segs)


def test_overlapping_windows_and_tail_minimum() -> None:
    pol = ClipPolicy(seconds=10.0, long_audio="windows", hop_seconds=5.0)
    segs = segments(_ramp(25.0), pol)
    assert [(s, e) for s, e, _ in segs] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]
    # 20.5 s: the window at 15 s would add only 0.5 s beyond 20 s (< min_tail_seconds=1): dropped.
    segs = segments(_ramp(20.5), pol)
    assert [(s, e) for s, e, _ in segs] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)]
    segs = segments(_ramp(21.0), pol)
    assert [(s, e) for s, e, _ in segs][-1] == (15.0, 21.0)
    # A 10.3 s file with no overlap: the 0.3 s tail is dropped; with min_tail 0 it is kept.
    assert len(segments(_ramp(10.3), ClipPolicy(long_audio="windows"))) == 1
    assert len(segments(_ramp(10.3), ClipPolicy(long_audio="windows", min_tail_seconds=0.0))) == 2


def test_hop_longer_than_window_leaves_gaps() -> None:
    segs = segments(_ramp(30.0), ClipPolicy(seconds=5.0, long_audio="windows", hop_seconds=10.0))
    assert [(s, e) for s, e, _ in segs] == [(0.0, 5.0), (10.0, 15.0), (20.0, 25.0)]


def test_empty_wave_gives_one_silent_window() -> None:
    [(s, e, w)] = segments(np.zeros(0, np.float32), ClipPolicy(seconds=1.0, long_audio="windows"))
    assert (s, e) == (0.0, 0.0) and w.shape == (16000,) and not w.any()


def test_window_sample_count_uses_rounding() -> None:
    [(_, _, w)] = segments(
        np.ones(10, np.float32), ClipPolicy(seconds=0.96), sample_rate=SAMPLE_RATE
    )
    assert w.shape == (15360,)
    [(_, _, w)] = segments(np.ones(10, np.float32), ClipPolicy(seconds=1 / 3), sample_rate=44100)
    assert w.shape == (14700,)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(seconds=0.0),
        dict(seconds=-1.0),
        dict(seconds=float("nan")),
        dict(long_audio="loop"),
        dict(hop_seconds=0.0),
        dict(min_tail_seconds=-1.0),
    ],
)
def test_invalid_policy_is_a_typed_error(kwargs: dict) -> None:
    with pytest.raises(AudiocapError, match="invalid clip policy"):
        ClipPolicy(**kwargs)


def test_policy_is_frozen_and_hashable() -> None:
    pol = ClipPolicy()
    assert (pol.seconds, pol.long_audio, pol.hop_seconds, pol.hop) == (10.0, "crop", None, 10.0)
    with pytest.raises(AttributeError):
        pol.seconds = 5.0  # type: ignore[misc]
    assert hash(pol) == hash(ClipPolicy())


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("rate", [8000, 11025, 22254, 44100, 48000, 96000, 16000])
def test_streamed_resampling_is_bit_identical(rate: int) -> None:
    x = np.random.default_rng(rate).uniform(-1, 1, rate * 3 + 17).astype(np.float32)
    whole = audio.resample(x, rate, SAMPLE_RATE)
    for block in (997, 4096, rate, len(x)):
        pieces = list(
            audio.resample_stream(
                (x[i : i + block] for i in range(0, len(x), block)), rate, SAMPLE_RATE
            )
        )
        np.testing.assert_array_equal(np.concatenate(pieces), whole)


STREAM_POLICIES = [
    ClipPolicy(),
    ClipPolicy(seconds=1.0),
    ClipPolicy(long_audio="windows"),
    ClipPolicy(seconds=1.0, long_audio="windows", hop_seconds=0.3),
    ClipPolicy(seconds=1.0, long_audio="windows", hop_seconds=2.5),
    ClipPolicy(seconds=2.0, long_audio="windows", min_tail_seconds=0.7),
]


@pytest.mark.parametrize(
    "rate,seconds,channels,ext",
    [
        (44100, 23.3, 2, "flac"),
        (16000, 3.2, 1, "wav"),
        (22050, 10.0, 1, "wav"),
        (8000, 31.7, 1, "ogg"),
        (48000, 0.5, 2, "wav"),
        (22254, 12.0, 1, "wav"),
        (44100, 12.4, 1, "mp3"),
    ],
)
def test_segment_stream_matches_segments_of_load(
    tmp_path: Path, rate: int, seconds: float, channels: int, ext: str
) -> None:
    """Windows cut block by block (blocks far smaller than a window, too) are those of the
    whole decoded file; an MP3 decoded in several reads differs from one read by float
    rounding in libsndfile's MPEG decoder (<= 2e-7), whatever audiocap does."""
    p = tmp_path / f"x.{ext}"
    sf.write(p, np.random.default_rng(0).uniform(-0.5, 0.5, (int(rate * seconds), channels)), rate)
    full = load(p)
    for policy in STREAM_POLICIES:
        ref = segments(full, policy)
        for block in (3001, audio.BLOCK_FRAMES):
            stream = audio.SegmentStream(p, policy, block=block)
            windows = list(stream)
            assert len(windows) == len(ref), (policy, block)
            for w, (_, _, r) in zip(windows, ref):
                if ext == "mp3" and block < rate * seconds:
                    np.testing.assert_allclose(w, r, rtol=0, atol=1e-6)
                else:
                    np.testing.assert_array_equal(w, r)
            assert stream.starts == tuple(s for s, _, _ in ref)
            assert stream.ends == tuple(e for _, e, _ in ref)
            assert stream.duration == len(full) / SAMPLE_RATE or (
                ext == "mp3" and policy.long_audio == "crop"
            )


def test_segment_stream_reports_broken_input_like_load(tmp_path: Path) -> None:
    for name, (path, err) in _broken_corpus(tmp_path).items():
        for policy in (ClipPolicy(), ClipPolicy(long_audio="windows")):
            with pytest.raises(err):
                list(audio.SegmentStream(path, policy))


def test_crop_stops_reading_after_the_first_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "long.flac"
    sf.write(p, np.random.default_rng(0).uniform(-0.5, 0.5, 44100 * 120), 44100)
    reads: list[int] = []
    real = sf.SoundFile.read

    def spy(self, frames=-1, *a, **kw):  # type: ignore[no-untyped-def]
        out = real(self, frames, *a, **kw)
        reads.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    stream = audio.SegmentStream(p, ClipPolicy())
    assert len(list(stream)) == 1 and stream.duration == 120.0 and stream.ends == (10.0,)
    assert 10 * 44100 < sum(reads) < 11 * 44100
