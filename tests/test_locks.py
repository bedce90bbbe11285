"""One training run per model folder: locks.hold_folder, held by train-decoder,
train-retriever and bootstrap on their --model folder, refuses a second run at once (exit 2,
one line naming the folder and the holder's pid) and never blocks after its holder is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from audiocap_cli.errors import UsageError
from audiocap_cli.locks import LOCK_NAME, hold_folder

HOLD = """
import sys, time
from audiocap_cli.locks import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run the audiocap commands at once, each in its own process."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "audiocap_cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(run, commands))


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_run_in_a_held_folder_fails_at_once(tmp_path: Path) -> None:
    model = tmp_path / "model"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(model)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        line = (
            f"model folder {model} is in use by another training run (pid {holder.pid}); "
            "wait for it to end, or train into another folder"
        )
        with pytest.raises(UsageError) as e, hold_folder(model):
            pass
        assert str(e.value) == line and e.value.exit_code == 2
        commands = [
            ["train-decoder", str(tmp_path / "data"), "-m", str(model), "-q"],
            ["train-retriever", str(tmp_path / "data"), "-m", str(model), "-q"],
            ["bootstrap", str(tmp_path / "captions.csv"), "-m", str(model), "-q"],
        ]
        runs = _run_all(commands)
        for args, r in zip(commands, runs):
            assert (r.returncode, r.stderr) == (2, f"audiocap: error: {line}\n"), args[0]
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything itself
        holder.wait()
    # the lock file stays, naming the dead holder, but the kernel released its lock
    assert (model / LOCK_NAME).read_text() == f"{holder.pid}\n"
    with hold_folder(model):
        assert (model / LOCK_NAME).read_text() != f"{holder.pid}\n"


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path: Path) -> None:
    """A training command given a missing dataset: one line, exit status 2 (configuration, not
    a failed input), and the --model folder it would have created is not left behind."""
    commands = [
        ["train-decoder", str(tmp_path / "nodata"), "-m", str(tmp_path / "a"), "-q"],
        ["train-retriever", str(tmp_path / "nodata"), "-m", str(tmp_path / "b"), "-q"],
        ["bootstrap", str(tmp_path / "no.csv"), "-m", str(tmp_path / "c"), "-q"],
    ]
    runs = _run_all(commands)
    for args, r in zip(commands, runs):
        assert r.returncode == 2, (args[0], r.stderr)
        assert r.stderr.startswith("audiocap: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    existing = tmp_path / "kept"
    existing.mkdir()
    with hold_folder(existing):
        pass
    assert existing.is_dir()  # a folder the user made stays, with its lock file


# ------------------------------------------------------------------ one writer per output file

WRITE = """
import sys
from audiocap_cli.pipeline.records import RecordWriter
w = RecordWriter(sys.argv[1])
w.write([{"path": "held.wav", "caption": "first"}])
print("held", flush=True)
sys.stdin.readline()
w.write([{"path": "held2.wav", "caption": "second"}])
w.close()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_writer_of_an_output_fails_and_touches_nothing(tmp_path: Path) -> None:
    """While one process writes -o FILE (the RecordWriter every caption run uses), a second
    `caption -o FILE` (with or without --resume) and a `merge -o FILE` fail at once with one
    line, exit status 2, and leave FILE as the first one writes it."""
    from audiocap_cli.locks import output_lock

    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", WRITE, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        line = (
            f"-o {out} is being written by another audiocap run (pid {holder.pid}); wait for "
            "it to end, or write elsewhere"
        )
        shard = tmp_path / "shard.jsonl"
        shard.write_text('{"path": "x.wav", "caption": "x"}\n')
        for args in (
            ["caption", str(tmp_path / "x.wav"), "-o", str(out), "-q"],
            ["caption", str(tmp_path / "x.wav"), "-o", str(out), "--resume", "-q"],
            ["merge", str(shard), "-o", str(out)],
        ):
            r = subprocess.run(
                [sys.executable, "-m", "audiocap_cli", *args],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert (r.returncode, r.stderr) == (2, f"audiocap: error: {line}\n"), args
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert [json.loads(x)["caption"] for x in out.read_text().splitlines()] == [
        "first",
        "second",
    ]
    assert not output_lock(out).exists()  # released and removed at the end of the run


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_killed_writer_leaves_nothing_that_blocks_resume(
    tmp_path: Path, tiny_workspace: Path, tiny_model: Path
) -> None:
    """A caption run killed (SIGKILL) after its first record leaves its lock file behind,
    unlocked; --resume takes it over and ends with one record per clip, none repeated."""
    from audiocap_cli.locks import output_lock

    clips = sorted((tiny_workspace / "audio").glob("*.wav"))[:3]
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "AUDIOCAP_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "audiocap_cli", "caption", *map(str, clips)]
    cmd += ["-m", str(tiny_model), "-o", str(out), "--batch-size", "1", "-q"]
    r = subprocess.run(
        cmd, env={**env, "AUDIOCAP_TEST_KILL_AFTER": "1"}, capture_output=True, timeout=300
    )
    assert r.returncode == -9 and output_lock(out).exists()
    assert len(out.read_text().splitlines()) == 1
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    paths = [json.loads(x)["path"] for x in out.read_text().splitlines()]
    assert sorted(paths) == sorted(map(str, clips))
    assert not output_lock(out).exists()
