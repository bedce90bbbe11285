"""`caption --shard I/N` partitions and `audiocap merge` (no model needed)."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from audiocap_cli.errors import AudiocapError
from audiocap_cli.scale.shards import check, merge, parse_shard, select_shard, shard_of


def test_parse_shard() -> None:
    assert parse_shard("1/2") == (1, 2) and parse_shard("4/4") == (4, 4)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0", "1/2/3"):
        with pytest.raises(AudiocapError):
            parse_shard(bad)


def test_shards_cover_every_path_once_in_any_order() -> None:
    paths = [f"/data/clips/{i // 100}/clip_{i}.flac" for i in range(2000)]
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    n = 5
    parts = [select_shard(paths, i, n) for i in range(1, n + 1)]
    assert sorted(p for part in parts for p in part) == sorted(paths)  # exactly once
    # another host lists the directories in another order: the same files per shard
    assert [set(select_shard(shuffled, i, n)) for i in range(1, n + 1)] == [set(p) for p in parts]
    assert all(250 < len(p) < 550 for p in parts)  # roughly even
    assert shard_of("a.wav", 7) == shard_of("a.wav", 7) and select_shard(paths, 1, 1) == paths
    assert shard_of("clip_0.wav", 2) == 1  # stable across releases (SHA-256), pinned


def _write(path: Path, rows: list[dict], tail: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return str(path)


def test_merge_checks_duplicates_partial_and_missing(tmp_path: Path) -> None:
    a = _write(
        tmp_path / "a.jsonl",
        [
            {"path": "x.wav", "start": 0.0, "caption": "c"},
            {"path": "x.wav", "start": 10.0, "caption": "d"},
        ],
    )
    b = _write(
        tmp_path / "b.jsonl",
        [{"path": "y.wav", "error": "not audio", "error_type": "UnsupportedAudioError"}],
    )
    out = io.StringIO()
    rep = merge([a, b], out, expected=["x.wav", "y.wav"])
    assert rep.ok and rep.records == 3 and rep.files == 2 and rep.errors == 1
    assert out.getvalue() == Path(a).read_text() + Path(b).read_text()
    assert check([a, b], expected=["x.wav", "y.wav", "z.wav"]).missing == ["z.wav"]
    assert check([a, a]).duplicates == ["x.wav", "x.wav@10.0"]
    c = _write(tmp_path / "c.jsonl", [{"path": "z.wav", "caption": "e"}], tail='{"path": "w.w')
    rep = check([c])
    assert rep.partial == [f"{c}:2"] and not rep.ok
    out = io.StringIO()
    assert not merge([a, a], out).ok and out.getvalue() == ""  # nothing written on a problem


def test_merge_cli(tmp_path: Path) -> None:
    for name in ("x.wav", "y.wav"):
        (tmp_path / name).write_bytes(b"")
    a = _write(tmp_path / "s1.jsonl", [{"path": str(tmp_path / "x.wav"), "caption": "c"}])
    b = _write(tmp_path / "s2.jsonl", [{"path": str(tmp_path / "y.wav"), "caption": "d"}])

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "audiocap_cli", "merge", *args], capture_output=True, text=True
        )

    r = run(a, b, "--expect", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["caption"] for line in r.stdout.splitlines()] == ["c", "d"]
    r = run(a, "--expect", str(tmp_path))
    assert r.returncode == 1 and r.stdout == "" and "1 missing input" in r.stderr


def test_shard_rule_is_the_documented_one() -> None:
    """docs/scale.md states the rule so that other tools can split the same way: the first 8
    bytes of SHA-256(path as UTF-8), big-endian, mod N, plus 1 (pinned with literal digests)."""
    import hashlib

    for path in ["a.wav", "clips/dog barking.flac", "/data/ü/x.mp3", "x" * 300]:
        for n in (1, 2, 3, 7, 64):
            d = hashlib.sha256(path.encode("utf-8")).digest()
            assert shard_of(path, n) == int.from_bytes(d[:8], "big") % n + 1
    # literal values, so that a change of rule fails here even if the loop above changed with it
    names = ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"]
    assert [shard_of(p, 7) for p in names] == [4, 3, 3, 2, 7]
    assert [shard_of(p, 3) for p in names] == [1, 2, 3, 1, 1]
