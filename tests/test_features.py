"""features.py: content-keyed cache, batching across files, per-file errors, invalidation."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiocap_cli.audio.features import ClipFeatures, FeatureCache, file_digest
from audiocap_cli.audio.io import ClipPolicy, segments
from audiocap_cli.errors import (
    AudioNotFoundError,
    ConfigMismatchError,
    EmptyAudioError,
    UnsupportedAudioError,
)

SR = 8000  # a fake encoder rate different from 16 kHz, to check the cache uses encoder.sample_rate


@dataclass(frozen=True)
class FakeConfig:
    dim: int = 3
    hop: int = 800  # samples per frame: 10 frames/s at 8 kHz
    gain: float = 1.0
    with_scores: bool = True


@dataclass
class FakeOutput:
    frames: torch.Tensor
    scores: torch.Tensor | None


class FakeEncoder:
    """Deterministic frames: per 0.1 s chunk, its mean times (d+1)*gain; scores = its max."""

    sample_rate = SR

    def __init__(self, config: FakeConfig = FakeConfig()) -> None:
        self.config = config
        self.dim = config.dim
        self.batches: list[int] = []

    def encode(self, waves: torch.Tensor) -> FakeOutput:
        assert waves.dtype == torch.float32 and waves.ndim == 2
        self.batches.append(waves.shape[0])
        b, n = waves.shape
        chunks = waves[:, : n - n % self.config.hop].reshape(b, -1, self.config.hop)  # [B, T, hop]
        scale = torch.arange(1, self.dim + 1, dtype=torch.float32) * self.config.gain
        frames = chunks.mean(-1, keepdim=True) * scale  # [B, T, D]
        scores = chunks.amax(-1, keepdim=True).repeat(1, 1, 2) if self.config.with_scores else None
        return FakeOutput(frames, scores)

    @property
    def windows(self) -> int:
        return sum(self.batches)


def expected(wave: np.ndarray, policy: ClipPolicy, cfg: FakeConfig = FakeConfig()) -> np.ndarray:
    """Reference frames [W, T, D] computed directly, window by window."""
    out = []
    for _, _, w in segments(wave, policy, SR):
        w = w[: len(w) - len(w) % cfg.hop].reshape(-1, cfg.hop)
        out.append(w.mean(-1, keepdims=True) * (np.arange(1, cfg.dim + 1) * cfg.gain))
    return np.stack(out).astype(np.float32)


def _wav(path: Path, seconds: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * SR)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, subtype="FLOAT")
    return x


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path / "cache"))


POLICY = ClipPolicy(seconds=1.0, long_audio="windows", min_tail_seconds=0.25)


def test_values_shapes_and_default_root(tmp_path: Path) -> None:
    x = _wav(tmp_path / "a.wav", 2.5, 0)
    enc = FakeEncoder()
    cache = FeatureCache()
    assert cache.root == tmp_path / "cache" / "features"
    f = cache.get(tmp_path / "a.wav", enc, POLICY)
    assert f.frames.shape == (3, 10, 3) and f.frames.dtype == np.float32
    assert f.scores is not None and f.scores.shape == (3, 10, 2)
    assert f.starts == (0.0, 1.0, 2.0) and f.ends == (1.0, 2.0, 2.5) and f.duration == 2.5
    np.testing.assert_allclose(f.frames, expected(x, POLICY), rtol=1e-5, atol=1e-7)


def test_second_call_is_served_from_disk(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 2.5, 0)
    enc = FakeEncoder()
    first = FeatureCache().get(tmp_path / "a.wav", enc, POLICY)
    assert enc.windows == 3
    second = FeatureCache().get(tmp_path / "a.wav", enc, POLICY)  # a new instance: disk only
    assert enc.windows == 3
    np.testing.assert_array_equal(first.frames, second.frames)
    assert second.frames.flags.writeable  # torch.from_numpy needs writable arrays
    np.testing.assert_array_equal(first.scores, second.scores)
    assert (first.starts, first.ends, first.duration) == (
        second.starts,
        second.ends,
        second.duration,
    )
    # Key is the content, not the name: a copy elsewhere is a hit too.
    (tmp_path / "copy.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    FeatureCache().get(tmp_path / "copy.wav", enc, POLICY)
    assert enc.windows == 3


def test_batches_span_files_and_match_one_by_one(tmp_path: Path) -> None:
    lengths = [0.3, 2.5, 1.0, 3.2, 0.15]
    waves = [_wav(tmp_path / f"{i}.wav", s, i) for i, s in enumerate(lengths)]
    paths = [tmp_path / f"{i}.wav" for i in range(len(lengths))]
    enc = FakeEncoder()
    ticks: list[int] = []
    out = FeatureCache(tmp_path / "c1").get_many(
        paths, enc, POLICY, batch_size=4, progress=ticks.append
    )
    # windows: 1 + 3 + 1 + 3 (3.2 s: its 0.2 s tail < 0.25 s is dropped) + 1 = 9 -> batches 4, 4, 1
    assert enc.batches == [4, 4, 1]
    assert sum(ticks) == len(paths)
    for f, x in zip(out, waves):
        assert isinstance(f, ClipFeatures)
        np.testing.assert_allclose(f.frames, expected(x, POLICY), rtol=1e-5, atol=1e-7)
    single = FakeEncoder()
    for p, f in zip(paths, out):
        g = FeatureCache(tmp_path / "c2").get_many([p], single, POLICY, batch_size=1)[0]
        assert isinstance(g, ClipFeatures)
        np.testing.assert_allclose(f.frames, g.frames, rtol=1e-6)
    assert set(single.batches) == {1}


def test_errors_are_returned_in_place(tmp_path: Path) -> None:
    _wav(tmp_path / "good.wav", 1.0, 0)
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    (tmp_path / "dir.wav").mkdir()
    paths = [
        tmp_path / n
        for n in ("good.wav", "missing.wav", "text.wav", "empty.wav", "dir.wav", "good.wav")
    ]
    ticks: list[int] = []
    out = FeatureCache().get_many(paths, FakeEncoder(), POLICY, progress=ticks.append)
    assert [type(r) for r in out] == [
        ClipFeatures,
        AudioNotFoundError,
        UnsupportedAudioError,
        EmptyAudioError,
        AudioNotFoundError,
        ClipFeatures,
    ]
    assert out[0] is out[5]  # same content encoded once
    assert sum(ticks) == len(paths)
    with pytest.raises(UnsupportedAudioError):
        FeatureCache().get(tmp_path / "text.wav", FakeEncoder(), POLICY)


def test_changed_file_is_recomputed(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    _wav(p, 1.0, 0)
    enc = FakeEncoder()
    before = FeatureCache().get(p, enc, POLICY)
    x = _wav(p, 1.0, 1)  # same name, same length, new content
    after = FeatureCache().get(p, enc, POLICY)
    assert enc.windows == 2
    np.testing.assert_allclose(after.frames, expected(x, POLICY), rtol=1e-5, atol=1e-7)
    assert not np.allclose(before.frames, after.frames)


@pytest.mark.parametrize(
    "change",
    [
        dict(cfg=FakeConfig(gain=2.0)),
        dict(policy=ClipPolicy(seconds=1.0, long_audio="crop")),
        dict(policy=ClipPolicy(seconds=0.5, long_audio="windows")),
    ],
)
def test_changed_config_or_policy_is_recomputed(tmp_path: Path, change: dict) -> None:
    x = _wav(tmp_path / "a.wav", 2.0, 0)
    FeatureCache().get(tmp_path / "a.wav", FakeEncoder(), POLICY)
    cfg, policy = change.get("cfg", FakeConfig()), change.get("policy", POLICY)
    enc = FakeEncoder(cfg)
    f = FeatureCache().get(tmp_path / "a.wav", enc, policy)
    assert enc.windows > 0
    np.testing.assert_allclose(f.frames, expected(x, policy, cfg), rtol=1e-5, atol=1e-7)


def test_configs_saved_beside_entries_and_checked(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 1.0, 0)
    cache = FeatureCache()
    enc = FakeEncoder()
    cache.get(tmp_path / "a.wav", enc, POLICY)
    d = cache.directory(enc, POLICY)
    assert json.loads((d / "encoder.json").read_text())["config"] == dataclasses.asdict(
        FakeConfig()
    )
    assert json.loads((d / "policy.json").read_text())["kind"] == "ClipPolicy"
    assert len(list(d.glob("*/*.feat"))) == 1
    # A tampered config beside the entries is refused, not silently trusted.
    blob = json.loads((d / "policy.json").read_text())
    blob["config"]["seconds"] = 7.0
    (d / "policy.json").write_text(json.dumps(blob))
    with pytest.raises(ConfigMismatchError, match="seconds"):
        FeatureCache().get(tmp_path / "a.wav", enc, POLICY)


@pytest.mark.parametrize(
    "damage", ["truncate", "garbage", "empty", "flipped_byte", "bad_header", "wrong_dim"]
)
def test_corrupt_entry_is_recomputed(tmp_path: Path, damage: str) -> None:
    p = tmp_path / "a.wav"
    x = _wav(p, 1.5, 0)
    cache = FeatureCache()
    cache.get(p, FakeEncoder(), POLICY)
    entry = cache.directory(FakeEncoder(), POLICY) / (d := file_digest(p))[:2] / f"{d}.feat"
    blob = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * 64)
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "flipped_byte":  # silent corruption of one sample: caught by the crc32
        entry.write_bytes(blob[:-5] + bytes([blob[-5] ^ 0x40]) + blob[-4:])
    elif damage == "bad_header":
        entry.write_bytes(blob.replace(b'"frames"', b'"frames_"', 1))
    else:  # a well-formed entry whose frame width does not match the encoder's dim
        bad = ClipFeatures(np.zeros((2, 10, 5), np.float32), None, (0.0, 1.0), (1.0, 1.5), 1.5)
        FeatureCache._write(entry, d, bad, p)
        assert FeatureCache()._read(entry, d, None) is not None
    enc = FakeEncoder()
    f = FeatureCache().get(p, enc, POLICY)
    assert enc.windows == 2
    np.testing.assert_allclose(f.frames, expected(x, POLICY), rtol=1e-5, atol=1e-7)
    assert FeatureCache()._read(entry, d, 3) is not None  # rewritten whole


def test_encoder_without_scores(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 1.0, 0)
    enc = FakeEncoder(FakeConfig(with_scores=False))
    assert FeatureCache().get(tmp_path / "a.wav", enc, POLICY).scores is None
    assert FeatureCache().get(tmp_path / "a.wav", enc, POLICY).scores is None
    assert enc.windows == 1


def test_resampled_to_encoder_rate(tmp_path: Path) -> None:
    p = tmp_path / "hi.wav"
    sf.write(p, np.zeros(44100, np.float32), 44100)  # 1 s at 44.1 kHz
    f = FeatureCache().get(p, FakeEncoder(), ClipPolicy(seconds=2.0))
    assert f.frames.shape == (1, 20, 3) and f.duration == pytest.approx(1.0)
    assert f.ends == (1.0,)


class LengthEncoder(FakeEncoder):
    """A FakeEncoder that is told each window's real length (as EfficientAT is)."""

    takes_lengths = True

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []

    def encode(self, waves: torch.Tensor, lengths: list[int] | None = None) -> FakeOutput:  # type: ignore[override]
        assert lengths is not None and len(lengths) == waves.shape[0]
        self.lengths += list(lengths)
        return super().encode(waves)


def test_encoders_that_take_lengths_get_each_windows_real_audio(tmp_path: Path) -> None:
    """Padding is not audio, but silence a file ends with is: the lengths passed are the
    samples each window holds before its zero padding, trailing digital silence included."""
    x = _wav(tmp_path / "a.wav", 2.3, 0)
    x[-SR // 2 :] = 0.0  # the file ends in 0.5 s of digital silence
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    enc = LengthEncoder()
    FeatureCache().get_many([tmp_path / "a.wav"], enc, POLICY)
    assert enc.lengths == [SR, SR, round(0.3 * SR)]
    crop = LengthEncoder()
    FeatureCache().get_many([tmp_path / "a.wav"], crop, ClipPolicy(seconds=10.0))
    assert crop.lengths == [len(x)]
