"""`caption --shard I/N` partitions and `audiocap merge` (no model needed)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from audiocap_cli.errors import AudiocapError
from audiocap_cli.pipeline.records import expand_inputs
from audiocap_cli.scale import shards
from audiocap_cli.scale.shards import (
    FileKeys,
    check,
    iter_inputs,
    merge,
    parse_shard,
    select_shard,
    shard_of,
)


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
    out = io.BytesIO()
    rep = merge([a, b], out, expected=["x.wav", "y.wav"])
    assert rep.ok and rep.records == 3 and rep.files == 2 and rep.errors == 1
    assert out.getvalue() == Path(a).read_bytes() + Path(b).read_bytes()
    assert check([a, b], expected=["x.wav", "y.wav", "z.wav"]).missing == ["z.wav"]
    assert check([a, a]).duplicates == ["x.wav", "x.wav@10.0"]
    c = _write(tmp_path / "c.jsonl", [{"path": "z.wav", "caption": "e"}], tail='{"path": "w.w')
    rep = check([c])
    assert rep.partial == [f"{c}:2"] and not rep.ok
    out = io.BytesIO()
    assert not merge([a, a], out).ok and out.getvalue() == b""  # nothing written on a problem
    # counts are complete, examples bounded; a line that is not UTF-8 is unparseable
    rows = [{"path": f"{i}.wav"} for i in range(3 * shards.SHOWN)]
    d = _write(tmp_path / "d.jsonl", rows + rows)
    rep = check([d], expected=[f"{i}.wav" for i in range(4 * shards.SHOWN)])
    assert (rep.n_duplicates, rep.n_missing) == (3 * shards.SHOWN, shards.SHOWN)
    assert rep.duplicates == [f"{i}.wav" for i in range(shards.SHOWN)]
    assert rep.missing == [f"{i}.wav" for i in range(3 * shards.SHOWN, 4 * shards.SHOWN)]
    assert f"{3 * shards.SHOWN} duplicated records" in rep.problems()[0]
    (tmp_path / "e.jsonl").write_bytes(b'{"path": "\xff.wav"}\n')
    assert check([str(tmp_path / "e.jsonl")]).partial == [f"{tmp_path / 'e.jsonl'}:1"]


def test_merge_finds_a_file_under_another_spelling(tmp_path: Path, monkeypatch) -> None:
    """caption de-duplicates its inputs by the file they name (records.file_key), keeping the
    first spelling: an expected path spelled otherwise is not missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.wav").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "clips")
    a = _write(tmp_path / "a.jsonl", [{"path": "clips/x.wav", "caption": "c"}])
    for spelling in ("./clips/x.wav", "link/x.wav", str(tmp_path / "clips" / "x.wav")):
        rep = check([a], expected=["clips/x.wav", spelling, "clips/y.wav"])
        assert rep.missing == ["clips/y.wav"] and rep.n_missing == 1, spelling


def test_file_key_is_realpath(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "a.wav").write_bytes(b"")
    (tmp_path / "ld").symlink_to(tmp_path / "d" / "e")
    (tmp_path / "d" / "la.wav").symlink_to(tmp_path / "d" / "e" / "a.wav")
    (tmp_path / "d" / "rel.wav").symlink_to("e/a.wav")
    file_key = FileKeys()
    for p in [
        "d/e/a.wav",
        "./d/e/a.wav",
        "ld/a.wav",
        "ld/../a.wav",  # .. after a symlink: its target's parent, not lexical
        "d/la.wav",
        "d/rel.wav",
        "d//e/a.wav",
        "nowhere/b.wav",
        "d/e/",
        "d/..",
        "a.wav",
        str(tmp_path / "ld" / "a.wav"),
    ]:
        assert file_key(p) == os.path.realpath(p), p


def test_iter_inputs_yields_what_caption_expands(tmp_path: Path) -> None:
    """merge streams the expected inputs (iter_inputs) instead of listing them
    (records.expand_inputs): the same paths, order and de-duplication aside."""
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("a.wav", "b.FLAC", "notes.txt", "sub/c.mp3", "sub/deeper/d.ogg"):
        (root / rel).write_bytes(b"")
    (root / "sub" / "dir.wav").mkdir()  # a directory named like audio: an input of its own
    locked = root / "locked.d"
    locked.mkdir()
    (locked / "e.wav").write_bytes(b"")
    locked.chmod(0)  # cannot be listed (unless root): kept as an input
    try:
        items = [
            str(root),
            str(root / "sub" / "dir.wav"),
            str(root / "sub" / "*.mp3"),
            str(root / "nothing" / "*.wav"),  # a glob matching nothing: kept as given
            str(tmp_path / "missing.wav"),
            "-",
        ]
        stdin = "x.wav\n\ny.wav\n"
        streamed = list(iter_inputs(items, io.StringIO(stdin)))
        listed = expand_inputs(items, io.StringIO(stdin))
        assert set(streamed) == set(listed) and len(listed) >= 9
        assert len(streamed) == len(listed) + 2  # dir.wav and c.mp3 twice: not de-duplicated
    finally:
        locked.chmod(0o755)


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


def test_merge_output_is_atomic(tmp_path: Path) -> None:
    """`merge -o FILE`: written whole or not at all; a failed rerun leaves FILE as it was (the
    shell's `> FILE` truncates it before merge even starts)."""
    a = _write(tmp_path / "s1.jsonl", [{"path": "x.wav", "caption": "c"}])
    b = _write(tmp_path / "s2.jsonl", [{"path": "y.wav", "caption": "d"}])
    out = tmp_path / "res" / "all.jsonl"
    out.parent.mkdir()

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "audiocap_cli", "merge", *args], capture_output=True, text=True
        )

    r = run(a, b, "-o", str(out), "--expect", "z.wav")
    assert r.returncode == 1 and "1 missing input: z.wav" in r.stderr and not out.exists()
    r = run(a, b, "-o", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    good = Path(a).read_bytes() + Path(b).read_bytes()
    assert out.read_bytes() == good and (out.stat().st_mode & 0o777) == 0o666 & ~_umask()
    out.chmod(0o640)
    r = run(a, a, "-o", str(out))  # a failed rerun
    assert r.returncode == 1 and f"nothing written ({out} unchanged)" in r.stderr
    assert out.read_bytes() == good and sorted(p.name for p in out.parent.iterdir()) == [out.name]
    r = run(b, a, "-o", str(out))
    assert r.returncode == 0 and out.read_bytes() == Path(b).read_bytes() + Path(a).read_bytes()
    assert (out.stat().st_mode & 0o777) == 0o640  # kept
    for bad, why in ((tmp_path / "no" / "x.jsonl", "no such directory"), (tmp_path, "directory")):
        r = run(a, "-o", str(bad))
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.splitlines()) == 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_merge_refuses_a_shard_replaced_after_the_check(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [{"path": "x.wav"}])
    rep = check([a])
    tmp = tmp_path / "new"
    tmp.write_text(Path(a).read_text())
    os.replace(tmp, a)
    with pytest.raises(AudiocapError, match="replaced or cut"):
        shards._copy_checked(rep, io.BytesIO())


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


def test_merge_into_a_failing_write_leaves_the_file(tmp_path: Path, monkeypatch) -> None:
    a = _write(tmp_path / "a.jsonl", [{"path": "x.wav"}, {"path": "y.wav"}])
    out = tmp_path / "all.jsonl"
    out.write_bytes(b"359 lines of an earlier merge\n")

    def half_then_full_disk(rep, f) -> None:
        f.write(b'{"path": "x.wav"}\n')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards, "_copy_checked", half_then_full_disk)
    with pytest.raises(AudiocapError, match="cannot write: No space left on device"):
        shards.merge_into([a], out)
    assert out.read_bytes() == b"359 lines of an earlier merge\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
