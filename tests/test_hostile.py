"""Hostile inputs (issue 12): special files that would hang a naive reader, and very long
recordings that would exhaust memory, generated here (never checked in).

Library-level tests are fast; the end-to-end run of `audiocap caption` over the whole corpus
uses the tiny model of test_pipeline (real shipped YAMNet) and is marked slow.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from _shared import long_wav
from test_pipeline import cli, env, model, workspace  # noqa: F401  (fixtures: the tiny model)

from audiocap_cli.audio.features import FeatureCache, file_digest
from audiocap_cli.audio.io import ClipPolicy, SegmentStream, load, open_regular, segments
from audiocap_cli.errors import AudioError, AudioNotFoundError
from audiocap_cli.pipeline.records import expand_inputs

DEV_ZERO = Path("/dev/zero")
HOUR = 3600.0


def quickly(fn: Callable[[], Any], seconds: float = 30.0) -> Any:
    """``fn()``, failing (instead of hanging the suite) if it has not returned in ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def special_files(d: Path) -> dict[str, Path]:
    """A FIFO, a socket and a directory, all named like audio, inside ``d`` (plus /dev/zero)."""
    d.mkdir(parents=True, exist_ok=True)
    os.mkfifo(d / "fifo.wav")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "socket.wav"))  # the socket file outlives the closed socket
    s.close()
    (d / "dir.wav").mkdir()
    return {
        "named pipe": d / "fifo.wav",
        "socket": d / "socket.wav",
        "directory": d / "dir.wav",
        "character device": DEV_ZERO,
    }


needs_posix = pytest.mark.skipif(
    not hasattr(os, "mkfifo") or not DEV_ZERO.exists(), reason="POSIX special files"
)


@needs_posix
def test_special_files_are_refused_without_being_opened(tmp_path: Path) -> None:
    for kind, p in special_files(tmp_path).items():
        for read in (open_regular, load, file_digest):
            with pytest.raises(AudioNotFoundError) as ei:
                quickly(lambda: read(p))
            assert kind in ei.value.cause and str(p) in str(ei.value), (read.__name__, ei.value)


@needs_posix
def test_feature_cache_gives_each_special_file_its_error(tmp_path: Path) -> None:
    from test_features import FakeEncoder

    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32), 8000)
    special = special_files(tmp_path / "in")
    paths = [*special.values(), good]
    out = quickly(
        lambda: FeatureCache(tmp_path / "cache").get_many(paths, FakeEncoder(), ClipPolicy())
    )
    assert [type(r).__name__ for r in out] == ["AudioNotFoundError"] * 4 + ["ClipFeatures"]


@needs_posix
def test_directory_expansion_lists_special_entries(tmp_path: Path) -> None:
    d = tmp_path / "clips"
    special_files(d)
    sf.write(d / "dir.wav" / "inside.wav", np.zeros(800, np.float32), 8000)
    (d / "notes.txt").write_text("not audio")
    found = expand_inputs([str(d)])
    names = ["dir.wav", "dir.wav/inside.wav", "fifo.wav", "socket.wav"]
    assert found == [str(d / n) for n in names]


def _peak_mib(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the peak of Python + numpy allocations while it ran (tracemalloc), MiB."""
    tracemalloc.start()
    try:
        value = fn()
        return value, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("hours", [3, 10])
def test_crop_reads_only_the_first_window(tmp_path: Path, hours: int) -> None:
    p = tmp_path / f"{hours}h.wav"
    long_wav(p, hours * HOUR)  # 8 kHz: resampled to 16 kHz
    stream = SegmentStream(p, ClipPolicy())
    windows, peak = _peak_mib(lambda: quickly(lambda: list(stream)))
    assert len(windows) == 1 and stream.starts == (0.0,) and stream.ends == (10.0,)
    assert stream.duration == hours * HOUR
    assert peak < 40, f"{peak:.0f} MiB held to crop a {hours}-hour file"
    # What the first window holds is what a full decode of its first minute gives.
    head = tmp_path / "head.wav"
    sf.write(head, sf.read(p, frames=60 * 8000, dtype="int16")[0], 8000, subtype="PCM_16")
    np.testing.assert_array_equal(windows[0], segments(load(head), ClipPolicy())[0][2])


def test_windows_stream_a_three_hour_file_in_bounded_memory(tmp_path: Path) -> None:
    """3 h at 8 kHz: the whole file resampled would be 660 MiB of float32; streamed, a block."""
    p = tmp_path / "3h.wav"
    long_wav(p, 3 * HOUR)
    policy = ClipPolicy(long_audio="windows")
    stream = SegmentStream(p, policy)

    def consume() -> tuple[int, float]:
        count, energy = 0, 0.0
        for w in stream:
            count += 1
            energy += float(np.square(w, dtype=np.float64).sum())
        return count, energy

    (count, energy), peak = _peak_mib(lambda: quickly(consume, 300))
    assert count == len(stream.starts) == 1080 and stream.ends[-1] == 3 * HOUR
    assert energy > 0  # the tone at the start came through
    assert peak < 64, f"{peak:.0f} MiB held to stream a 3-hour file"


def test_windows_features_of_a_long_file_are_held_once(tmp_path: Path) -> None:
    """Through the cache (fake encoder, 1 h in windows: 147 MB of features): the features are
    the only thing that grows with the length, held once, never beside their copies. Peak RSS
    of a child process, as a user's `caption` run sees it (tracemalloc misses torch's memory)."""
    import subprocess
    import sys

    long_wav(tmp_path / "1h.wav", HOUR)
    long_wav(tmp_path / "short.wav", 30.0)
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_features import FakeConfig, FakeEncoder
from audiocap_cli.audio.io import ClipPolicy
from audiocap_cli.audio.features import FeatureCache
enc, policy = FakeEncoder(FakeConfig(dim=1024)), ClipPolicy(long_audio="windows")
cache = FeatureCache({str(tmp_path / "cache")!r})
cache.get({str(tmp_path / "short.wav")!r}, enc, policy)  # the same path, warmed up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
f = cache.get({str(tmp_path / "1h.wav")!r}, enc, policy)
print(f.frames.shape[0], base * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      f.frames.nbytes + f.scores.nbytes)
"""
    r = quickly(
        lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True), 300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    windows, base, peak, held = map(int, r.stdout.split())
    assert windows == 360 and held > 140e6
    assert peak - base < 1.25 * held + 40e6, (
        f"grew {(peak - base) / 1e6:.0f} MB for {held / 1e6:.0f} MB of features"
    )


@needs_posix
@pytest.mark.slow
def test_caption_hostile_corpus(
    tmp_path: Path, model: Path, env: dict[str, str], workspace: Path
) -> None:
    """Every bad entry is one error line, quickly; every good file is captioned; exit 1."""
    from test_audio import _broken_corpus

    d = tmp_path / "corpus"
    special = special_files(d)
    broken = _broken_corpus(d)  # in d/broken: empty, truncated, NaN, not audio, ... files
    for src in sorted((workspace / "audio").glob("test_*.wav"))[:2]:
        (d / src.name).write_bytes(src.read_bytes())
    long_wav(d / "long_3h.wav", 3 * HOUR)
    long_wav(d / "long_10h.wav", 10 * HOUR)
    missing = broken.pop("missing.wav")[0]
    args = [str(d), str(DEV_ZERO), str(missing)]
    bad = {str(p): err.__name__ for p, err in broken.values()}
    bad.update({str(p): "AudioNotFoundError" for p in special.values()})
    bad[str(missing)] = "AudioNotFoundError"
    expanded = expand_inputs(args)
    good = [p for p in expanded if p not in bad]
    assert (
        set(bad) <= set(expanded) and len(good) == 8
    )  # 2 clips, 2 long, _src.wav, _full.{flac,mp3,ogg}
    r = quickly(lambda: cli("caption", *args, "-m", str(model), "-q", env=env, check=False), 600)
    assert r.returncode == 1, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(row["path"] for row in rows) == sorted(expanded)  # one line each (crop)
    errors = {row["path"]: row["error_type"] for row in rows if "error" in row}
    assert errors == bad
    assert all(row["caption"] for row in rows if row["path"] in good)
    assert r.stderr.count("\n") >= len(bad)  # each error reported on stderr too


def test_a_broken_long_file_fails_alone(tmp_path: Path) -> None:
    """Damage found partway through a streamed file is that file's error, after its first
    windows were already cut; the files around it are unaffected."""
    from test_features import FakeEncoder

    p = tmp_path / "nan_late.wav"
    x = np.full(8000 * 40, 0.1, np.float32)
    x[-100] = np.nan
    sf.write(p, x, 8000, subtype="FLOAT")
    ok = tmp_path / "ok.wav"
    sf.write(ok, x[:8000], 8000, subtype="FLOAT")
    stream = SegmentStream(p, ClipPolicy(seconds=1.0, long_audio="windows"), 8000, block=8000)
    got = []
    with pytest.raises(AudioError, match="NaN"):
        for w in stream:
            got.append(w)
    assert len(got) >= 30
    out = FeatureCache(tmp_path / "cache").get_many(
        [ok, p, ok], FakeEncoder(), ClipPolicy(seconds=1.0, long_audio="windows"), batch_size=4
    )
    assert [type(r).__name__ for r in out] == ["ClipFeatures", "InvalidAudioError", "ClipFeatures"]


@pytest.mark.parametrize("capacity", [1, 3, 5, 9])
def test_cache_entry_filled_in_place_round_trips(tmp_path: Path, capacity: int) -> None:
    """Entries are laid out for the windows a header promises; fewer (scores moved up) or
    more (room doubled, as for an MP3 longer than its header says) still store exactly."""
    from audiocap_cli.audio.features import _Entry

    rng = np.random.default_rng(capacity)
    frames, scores = (
        rng.standard_normal((5, 4, 3)).astype(np.float32),
        rng.random((5, 4, 2)).astype(np.float32),
    )
    entry = _Entry("ab" * 32, (4, 3), (4, 2), capacity, tmp_path / "x.wav")
    for f, s in zip(frames, scores):
        entry.add(f, s)
    starts, ends = tuple(np.arange(5) / 3), tuple(np.arange(1, 6) / 3)
    path = tmp_path / "e.feat"
    path.write_bytes(entry.seal(starts, ends, 5 / 3))
    np.testing.assert_array_equal(entry.frames, frames)
    np.testing.assert_array_equal(entry.scores, scores)
    back = FeatureCache(tmp_path)._read(path, "ab" * 32, 3)
    assert (
        back is not None and back.starts == starts and back.ends == ends and back.duration == 5 / 3
    )
    np.testing.assert_array_equal(back.frames, frames)
    np.testing.assert_array_equal(back.scores, scores)
