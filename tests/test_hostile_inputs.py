"""Hostile inputs (issue 36): no input of ``audiocap caption`` is silently dropped (a directory
named like audio, an unreadable subdirectory) or captioned twice (one file under several
spellings, also across ``--resume``), and ``caption -`` reads stdin in bounded memory.

Library tests use records.py directly; one end-to-end run uses the session's tiny model.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiocap_cli.errors import UsageError
from audiocap_cli.pipeline import records
from audiocap_cli.pipeline.captioner import pending
from audiocap_cli.pipeline.records import RecordWriter, expand_inputs

DEV_ZERO = Path("/dev/zero")


def _wav(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(p, np.zeros(800, np.float32), 8000)
    return p


# ---- 1. a directory named like audio, given directly ------------------------------------------


def test_directory_named_like_audio_given_directly_is_an_input(tmp_path: Path) -> None:
    good = _wav(tmp_path / "good.wav")
    (tmp_path / "x.wav").mkdir()
    inner = _wav(tmp_path / "x.wav" / "inner.wav")
    given = str(tmp_path / "x.wav") + "/"
    # kept as given (open_regular refuses it later: one error record), and still searched
    assert expand_inputs([str(good), given]) == [str(good), given, str(inner)]
    (tmp_path / "y.wav").mkdir()  # alone and empty: one input, not "no input files"
    assert expand_inputs([str(tmp_path / "y.wav")]) == [str(tmp_path / "y.wav")]
    # a directory not named like audio is only searched, as before
    (tmp_path / "plain").mkdir()
    assert expand_inputs([str(tmp_path / "plain")]) == []


# ---- 2. unreadable directories inside a directory input ---------------------------------------


def _deny_scandir(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """os.scandir raising PermissionError for ``denied`` (tests run as root, who reads all)."""
    real = os.scandir

    def scandir(path=".", *a, **k):  # type: ignore[no-untyped-def]
        if os.path.realpath(os.fspath(path)) == os.path.realpath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_subdirectory_is_an_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "clips"
    a = _wav(d / "a.wav")
    _wav(d / "private" / "hidden.wav")
    z = _wav(d / "z.wav")
    _deny_scandir(monkeypatch, d / "private")
    # the directory that could not be listed stays an input (its error record counts)
    assert expand_inputs([str(d)]) == [str(a), str(d / "private"), str(z)]


def test_unreadable_top_directory_is_an_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "clips"
    _wav(d / "a.wav")
    _deny_scandir(monkeypatch, d)
    assert expand_inputs([str(d)]) == [str(d)]


# ---- 3. bounded stdin -------------------------------------------------------------------------


@pytest.mark.skipif(not DEV_ZERO.exists(), reason="needs /dev/zero")
def test_stdin_from_dev_zero_is_refused_in_bounded_memory() -> None:
    with open(DEV_ZERO, encoding="utf-8") as f, pytest.raises(UsageError, match="stdin"):
        expand_inputs(["-"], f)


def test_stdin_line_too_long_or_with_nul_is_refused() -> None:
    n = records.MAX_PATH_CHARS
    ok = "a" * n
    assert expand_inputs(["-"], io.StringIO(f"{ok}\n")) == [ok]
    with pytest.raises(UsageError, match="line 2"):
        expand_inputs(["-"], io.StringIO(f"x.wav\n{'a' * (n + 1)}\n"))
    with pytest.raises(UsageError, match="line 1"):
        expand_inputs(["-"], io.StringIO("a.wav\0b.wav\n"))


def test_stdin_path_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_STDIN_PATHS", 3)
    assert expand_inputs(["-"], io.StringIO("a\nb\n\nc\n")) == ["a", "b", "c"]
    with pytest.raises(UsageError, match="more than 3"):
        expand_inputs(["-"], io.StringIO("a\nb\nc\nd\n"))


@pytest.mark.skipif(not DEV_ZERO.exists(), reason="needs /dev/zero")
def test_cli_caption_stdin_dev_zero_is_one_error_line(tmp_path: Path) -> None:
    with open(DEV_ZERO, "rb") as zero:
        r = subprocess.run(
            [sys.executable, "-m", "audiocap_cli", "caption", "-", "-q"],
            stdin=zero,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stdout == ""
    assert r.stderr.startswith("audiocap: error: stdin") and r.stderr.count("\n") == 1, r.stderr


# ---- 4. one file under several spellings ------------------------------------------------------


def _spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    _wav(tmp_path / "a.wav")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link.wav").symlink_to(tmp_path / "a.wav")
    return ["a.wav", "./a.wav", "dir/../a.wav", str(tmp_path / "a.wav"), "link.wav"]


def test_one_file_under_several_spellings_is_one_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _spellings(tmp_path, monkeypatch)
    assert expand_inputs(names) == ["a.wav"]  # the first spelling, as given
    assert expand_inputs(["-"], io.StringIO("\n".join(reversed(names)) + "\n")) == ["link.wav"]
    assert expand_inputs([str(tmp_path), "a.wav"]) == [str(tmp_path / "a.wav")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_knows_a_file_under_another_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    names = _spellings(tmp_path, monkeypatch)
    _wav(tmp_path / "b.wav")
    out = tmp_path / f"out.{fmt}"
    with RecordWriter(str(out), fmt=fmt) as w:
        w.write([{"path": "a.wav", "caption": "silence"}])
    with RecordWriter(str(out), fmt=fmt, resume=True) as w:
        assert w.done == {"a.wav"}  # the paths as written
        todo = pending([*names[1:], str(tmp_path / "b.wav")], w)
    assert todo == [str(tmp_path / "b.wav")]


# ---- end to end ---------------------------------------------------------------------------------


def test_cli_directory_input_and_spellings_end_to_end(
    tmp_path: Path, tiny_workspace: Path, tiny_model: Path
) -> None:
    """A directory named like audio fails (exit 1, counted); a clip given twice under two
    spellings is captioned once; --resume with its absolute path captions nothing again."""
    src = sorted((tiny_workspace / "audio").glob("test_*.wav"))[0]
    (tmp_path / "a.wav").write_bytes(src.read_bytes())
    (tmp_path / "x.wav").mkdir()
    env = {**os.environ, "AUDIOCAP_CACHE": str(tmp_path / "cache")}

    def caption(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "audiocap_cli", "caption", *args, "-m", str(tiny_model), "-q"]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )

    r = caption("a.wav", "./a.wav", "x.wav/", "-o", "out.jsonl")
    assert r.returncode == 1, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == ["a.wav", "x.wav/"]
    assert "caption" in rows[0] and "directory" in rows[1]["error"]
    assert "1 of 2 files failed" in r.stderr
    before = (tmp_path / "out.jsonl").read_text()
    r = caption(str(tmp_path / "a.wav"), "-o", "out.jsonl", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out.jsonl").read_text() == before.splitlines(keepends=True)[0]
