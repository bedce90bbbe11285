"""Audio files whose headers or shapes are absurd (issue 36): each is that file's error (or, when
legal, decodes fully), never a traceback, a huge allocation or a dead batch."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_pipeline import cli, env, model, workspace  # noqa: F401  (fixtures: the tiny model)

from audiocap_cli.audio.io import (
    MAX_CHANNELS,
    ClipPolicy,
    SegmentStream,
    load,
)
from audiocap_cli.errors import InvalidAudioError, TooShortAudioError, UnsupportedAudioError

SR = 16000
MODES = ("crop", "windows")


def pcm16_wav(path: Path, rate: int, channels: int, frames: int, seed: int = 0) -> Path:
    """A 16-bit PCM WAV written by hand, so that its header may say anything (rate, channels)."""
    align = 2 * channels
    data = frames * align
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align, 16)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data))
        rng = np.random.default_rng(seed)
        for s in range(0, frames, 1 << 14):
            m = min(1 << 14, frames - s)
            f.write((rng.standard_normal((m, channels)) * 2000).astype("<i2").tobytes())
    return path


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def flac_declaring(path: Path, wave: np.ndarray, total: int) -> Path:
    """A FLAC of ``wave`` whose STREAMINFO says ``total`` samples (0: "unknown length").
    STREAMINFO's body starts at byte 8 (after 'fLaC' and the block header); the total sample
    count is the low 36 bits of its bytes 13..17."""
    sf.write(path, wave, SR, format="FLAC", subtype="PCM_16")
    b = bytearray(path.read_bytes())
    assert b[:4] == b"fLaC"
    v = int.from_bytes(b[21:26], "big")
    b[21:26] = ((v & ~((1 << 36) - 1)) | total).to_bytes(5, "big")
    path.write_bytes(bytes(b))
    return path


def stream(path: Path, mode: str, **kw: object) -> SegmentStream:
    s = SegmentStream(path, ClipPolicy(long_audio=mode, **kw))  # type: ignore[arg-type]
    s.windows = list(s)  # type: ignore[attr-defined]
    return s


def test_absurd_sample_rate_is_an_error(tmp_path: Path) -> None:
    """A 2 GHz rate would ask the resampler's filter design for 298 GiB."""
    p = pcm16_wav(tmp_path / "2ghz.wav", 2_000_000_000, 1, 16000)
    with pytest.raises(InvalidAudioError, match=r"unsupported sample rate \(2000000000 Hz"):
        load(p)
    for mode in MODES:
        with pytest.raises(InvalidAudioError, match="unsupported sample rate"):
            stream(p, mode)
    with pytest.raises(InvalidAudioError, match=r"unsupported sample rate \(500 Hz"):
        load(pcm16_wav(tmp_path / "500hz.wav", 500, 1, 16000))


def test_flac_of_unknown_length_is_read_to_its_end(tmp_path: Path) -> None:
    """total_samples = 0 is legal ("unknown"): libsndfile then reports 2^63-1 frames, which must
    size nothing; the file is read to EOF, in every mode."""
    wave = tone(12.0)
    p = flac_declaring(tmp_path / "unknown.flac", wave, 0)
    assert sf.info(str(p)).frames >= 1 << 62
    ref = sf.read(flac_declaring(tmp_path / "known.flac", wave, len(wave)), dtype="float32")[0]
    np.testing.assert_array_equal(load(p), ref)
    crop = stream(p, "crop")
    assert crop.duration == 12.0 and len(crop.windows) == 1  # type: ignore[attr-defined]
    np.testing.assert_array_equal(crop.windows[0], ref[: 10 * SR])  # type: ignore[attr-defined]
    win = stream(p, "windows")
    assert win.duration == 12.0 and win.starts == (0.0, 10.0)
    np.testing.assert_array_equal(win.windows[1][: 2 * SR], ref[10 * SR :])  # type: ignore[attr-defined]


def test_flac_declaring_fewer_samples_decodes_what_libsndfile_gives(tmp_path: Path) -> None:
    """A FLAC under-declaring its length: libsndfile stops at the declared count and offers no
    way past it (documented limitation); what is read is consistent in every mode."""
    p = flac_declaring(tmp_path / "under.flac", tone(3.0), SR)
    assert len(load(p)) == SR
    for mode in MODES:
        assert stream(p, mode).duration == 1.0


def test_too_many_channels_is_an_error(tmp_path: Path) -> None:
    p = pcm16_wav(tmp_path / "many.wav", SR, MAX_CHANNELS + 1, SR)
    with pytest.raises(UnsupportedAudioError, match=f"{MAX_CHANNELS + 1} channels"):
        load(p)
    for mode in MODES:
        with pytest.raises(UnsupportedAudioError):
            stream(p, mode)


def test_decode_memory_does_not_grow_with_channels(tmp_path: Path) -> None:
    """Blocks are sized in bytes: 12 s of 256 channels (196 MB as float32) is decoded a few MB
    at a time (1 Mi-frame blocks held it all at once)."""
    p = pcm16_wav(tmp_path / "c256.wav", SR, 256, 12 * SR)
    tracemalloc.start()
    try:
        s = SegmentStream(p, ClipPolicy(long_audio="windows"))
        n = sum(1 for _ in s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 2 and s.duration == 12.0
    assert peak < 48 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_clip_too_short_to_hear_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "click.wav"
    sf.write(p, tone(0.001), SR)
    with pytest.raises(TooShortAudioError) as e:
        load(p)
    assert e.value.cause == "audio too short to caption (0.001 s < 0.1 s)"
    for mode in MODES:
        with pytest.raises(TooShortAudioError):
            stream(p, mode)
    sf.write(tmp_path / "ok.wav", tone(0.1), SR)  # the threshold itself is captioned
    assert len(load(tmp_path / "ok.wav")) == SR // 10


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_caption_batch_of_hostile_files(
    tmp_path: Path,
    model: Path,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    workspace: Path,  # noqa: F811
    mode: str,
) -> None:
    """One record per input; the good files captioned; exit 1 for the failed ones."""
    d = tmp_path / "batch"
    d.mkdir()
    bad = {
        str(pcm16_wav(d / "2ghz.wav", 2_000_000_000, 1, 16000)): "InvalidAudioError",
        str(pcm16_wav(d / "many.wav", SR, MAX_CHANNELS + 1, 4000)): "UnsupportedAudioError",
        str(pcm16_wav(d / "click.wav", SR, 1, 16)): "TooShortAudioError",
    }
    (d / "folder.wav").mkdir()  # a directory that looks like audio, inside the named one
    bad[str(d / "folder.wav")] = "AudioNotFoundError"
    (d / "text.mp3").write_text("not audio at all\n" * 40)
    bad[str(d / "text.mp3")] = "UnsupportedAudioError"
    good = [
        str(flac_declaring(d / "unknown.flac", tone(12.0), 0)),
        str(pcm16_wav(d / "c256.wav", SR, 256, 2 * SR)),
    ]
    src = sorted((workspace / "audio").glob("test_*.wav"))[0]
    good.append(str(d / src.name))
    (d / src.name).write_bytes(src.read_bytes())
    r = cli("caption", str(d), "-m", str(model), "-q", "--long-audio", mode, env=env, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    paths = [row["path"] for row in rows]
    assert sorted(set(paths)) == sorted([*bad, *good])
    if mode == "crop":
        assert len(paths) == len(bad) + len(good)  # one line each
    assert {row["path"]: row["error_type"] for row in rows if "error" in row} == bad
    assert all(row.get("caption") for row in rows if row["path"] in good)
