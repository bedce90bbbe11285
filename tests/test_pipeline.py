"""End to end through the CLI as a user runs it: train-retriever -> build-index ->
(train-decoder) -> caption -> eval, on a small synthetic dataset with the real shipped YAMNet,
plus the SIGKILL-and-resume guarantee of `caption -o --resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _shared import CLASSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tiny_workspace: Path) -> Path:
    """The session's synthetic dataset (conftest.py; test_hostile captions it too)."""
    return tiny_workspace


def cli(
    *args: str, env: dict[str, str], check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=900,
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"audiocap {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
        )
    return r


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**os.environ, "AUDIOCAP_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    """The session's tiny triplet-retriever model of ``workspace`` (conftest.py)."""
    return tiny_model


def test_caption_jsonl_errors_and_exit_status(
    workspace: Path, model: Path, env: dict[str, str]
) -> None:
    bad = workspace / "notaudio.wav"
    bad.write_text("hello")
    test_files = sorted(str(p) for p in (workspace / "audio").glob("test_*.wav"))
    r = cli("caption", *test_files, str(bad), "-m", str(model), "-q", env=env, check=False)
    assert r.returncode == 1  # one input failed, after the others were captioned
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == test_files + [str(bad)]
    for row in rows[:-1]:
        assert row["caption"] and len(row["guidance"]) == 5
        assert all(g["distance"] is not None for g in row["guidance"])
    assert "error" in rows[-1] and "notaudio.wav" in r.stderr


def test_index_refuses_other_retriever(workspace: Path, model: Path, env: dict[str, str]) -> None:
    other = workspace / "other"
    cli(
        "train-retriever",
        str(workspace),
        "-m",
        str(other),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "-q",
        env=env,
    )
    import shutil

    shutil.copytree(model / "index", other / "index")
    r = cli(
        "caption",
        str(next((workspace / "audio").glob("test_*.wav"))),
        "-m",
        str(other),
        "-q",
        env=env,
        check=False,
    )
    assert r.returncode != 0 and "rebuild" in r.stderr and "Traceback" not in r.stderr


def test_build_index_add_without_rebuild(
    workspace: Path, model: Path, env: dict[str, str], tmp_path: Path
) -> None:
    import shutil

    m = tmp_path / "grow"
    shutil.copytree(model, m)
    r = cli("build-index", str(workspace), "-m", str(m), "--split", "val", "--add", env=env)
    assert "added 6 new clips" in r.stderr
    r = cli("build-index", str(workspace), "-m", str(m), "--split", "val", "--add", env=env)
    assert "added 0 new clips (6 already indexed)" in r.stderr
    ids = [
        json.loads(line)["id"] for line in (m / "index" / "entries.jsonl").read_text().splitlines()
    ]
    assert len(ids) == 24 and len(set(ids)) == 24  # 18 train + 6 val


def test_eval_on_predictions_and_split(workspace: Path, model: Path, env: dict[str, str]) -> None:
    out = workspace / "preds.jsonl"
    test_files = sorted(str(p) for p in (workspace / "audio").glob("test_*.wav"))
    cli("caption", *test_files, "-m", str(model), "-o", str(out), "-q", env=env)
    r = cli(
        "eval",
        "--dataset",
        str(workspace),
        "--split",
        "test",
        "--predictions",
        str(out),
        "-q",
        env=env,
    )
    table = json.loads(r.stdout)
    assert table[0]["n"] == 6 if "n" in table[0] else True
    names = [row.get("system") or row.get("name") for row in table]
    assert "Human" in names[-1]
    # The model records the dataset it was trained on: `eval --split test -m MODEL` needs no
    # --dataset, and captions and scores what `caption` then `eval --predictions` did.
    assert json.loads((model / "config.json").read_text())["config"]["dataset"] == str(
        workspace.resolve()
    )
    r2 = cli("eval", "--split", "test", "-m", str(model), "-q", env=env)
    assert f"dataset {workspace.resolve()}" in r2.stderr
    scores = [{k: v for k, v in row.items() if k != "system"} for row in json.loads(r2.stdout)]
    assert scores == [{k: v for k, v in row.items() if k != "system"} for row in table]


def test_caption_resume_after_sigkill(workspace: Path, model: Path, env: dict[str, str]) -> None:
    files = sorted(str(p) for p in (workspace / "audio").glob("*.wav"))  # 30 clips
    out = workspace / "resume.jsonl"
    args = [
        sys.executable,
        "-m",
        "audiocap_cli",
        "caption",
        *files,
        "-m",
        str(model),
        "-o",
        str(out),
        "--resume",
        "--batch-size",
        "1",
        "-q",
    ]
    # The test hook in records.py SIGKILLs the run right after its 3rd flushed record: a kill
    # mid-run on any machine, fast or slow (a timed poll was too late on fast ones).
    proc = subprocess.run(
        args, env={**env, "AUDIOCAP_TEST_KILL_AFTER": "3"}, capture_output=True, timeout=900
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert out.read_text().count("\n") == 3  # one line per clip, each flushed before the kill
    with open(out, "a") as f:
        f.write('{"path": "half a line')  # as if killed mid-write
    cli("caption", *files, "-m", str(model), "-o", str(out), "--resume", "-q", env=env)
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert sorted(paths) == files  # every clip exactly once


def _long_recording(workspace: Path, seconds: float) -> Path:
    """``seconds`` of the dataset's clips one after another (windows that differ), at 16 kHz."""
    import numpy as np
    import soundfile as sf

    out = workspace / f"long_{seconds:g}s.wav"
    if not out.exists():
        clips = [
            sf.read(p, dtype="float32")[0] for p in sorted((workspace / "audio").glob("*.wav"))
        ]
        wave = np.concatenate(clips * (1 + int(seconds * 16000) // sum(map(len, clips))))
        sf.write(out, wave[: int(seconds * 16000)], 16000)
    return out


def _windows_run(long: Path, model: Path, out: Path, *extra: str) -> list[str]:
    # --batch-size 2: a chunk is 2 windows, so that a 65 s file (7 windows) streams in 4 writes.
    return [
        sys.executable, "-m", "audiocap_cli", "caption", str(long), "-m", str(model),
        "--long-audio", "windows", "--batch-size", "2", "-o", str(out), "-q", *extra,
    ]  # fmt: skip


def test_windows_mode_writes_a_long_files_first_windows_first(
    workspace: Path, model: Path, env: dict[str, str]
) -> None:
    """A long file's windows go out a chunk at a time as they are captioned: killed right after
    its first write, the output holds its first 2 windows (of 7), not the file."""
    long, out = _long_recording(workspace, 65.0), workspace / "first.jsonl"
    kill = {**env, "AUDIOCAP_TEST_KILL_AFTER": "1"}
    proc = subprocess.run(
        _windows_run(long, model, out), env=kill, capture_output=True, timeout=900
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["start"], r["end"]) for r in rows] == [(0.0, 10.0), (10.0, 20.0)]
    assert all(r["caption"] and "last" not in r for r in rows)


def test_windows_mode_resume_after_sigkill_mid_file(
    workspace: Path, model: Path, env: dict[str, str]
) -> None:
    """Killed mid-file, then resumed: every window of the long file exactly once, with the
    captions of an uninterrupted run, the final one marked "last"."""
    long = _long_recording(workspace, 65.0)
    ref, out = workspace / "whole.jsonl", workspace / "killed.jsonl"
    subprocess.run(_windows_run(long, model, ref), env=env, check=True, timeout=900)
    want = [json.loads(line) for line in ref.read_text().splitlines()]
    assert [r["start"] for r in want] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert [r.get("last") for r in want] == [None] * 6 + [True]
    kill = {**env, "AUDIOCAP_TEST_KILL_AFTER": "2"}
    proc = subprocess.run(
        _windows_run(long, model, out), env=kill, capture_output=True, timeout=900
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert out.read_text().count("\n") == 4  # two chunks of 2 windows, then the kill
    with open(out, "a") as f:
        f.write('{"path": "' + str(long) + '", "start": 40.0, "cap')  # as if killed mid-write
    subprocess.run(_windows_run(long, model, out, "--resume"), env=env, check=True, timeout=900)
    assert [json.loads(line) for line in out.read_text().splitlines()] == want


def test_decoder_end_to_end(
    workspace: Path, model: Path, env: dict[str, str], tmp_path: Path
) -> None:
    import shutil

    m = tmp_path / "with_decoder"
    shutil.copytree(model, m)
    cli(
        "train-decoder",
        str(workspace),
        "-m",
        str(m),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "-q",
        env=env,
    )
    assert (m / "decoder" / "decoder.json").is_file() and (
        m / "decoder" / "decoder.safetensors"
    ).is_file()
    test_files = sorted(str(p) for p in (workspace / "audio").glob("test_*.wav"))
    r1 = cli(
        "caption", *test_files, "-m", str(m), "--beam-size", "2", "--max-len", "8", "-q", env=env
    )
    r2 = cli(
        "caption", *test_files, "-m", str(m), "--beam-size", "2", "--max-len", "8", "-q", env=env
    )
    caps = [json.loads(line)["caption"] for line in r1.stdout.splitlines()]
    assert len(caps) == len(test_files) and all(isinstance(c, str) for c in caps)
    assert caps == [json.loads(line)["caption"] for line in r2.stdout.splitlines()]  # deterministic
    r = cli(
        "eval",
        "--dataset",
        str(workspace),
        "--split",
        "test",
        "-m",
        str(m),
        "--scope",
        "all",
        "--beam-size",
        "1",
        "-q",
        env=env,
    )
    names = [row.get("system") or row.get("name") for row in json.loads(r.stdout)]
    for expected in (
        "Ours",
        "1NN-yamnet",
        "Triplet-Retrieval",
        "Top1-BERTScore",
        "Ours (GT)",
        "Human",
    ):
        assert expected in names


def test_text_only_bootstrap(tmp_path: Path, env: dict[str, str], workspace: Path) -> None:
    corpus = tmp_path / "corpus.csv"
    lines = ["audiocap_id,youtube_id,start_time,caption"]
    caps = [c for cs in CLASSES.values() for c in cs] + [
        "A dog barks.",
        "A dog is barking loudly.",
        "Dogs bark in the distance.",
        "A man speaks.",
        "A man is talking.",
        "Rain falls on a roof.",
        "Heavy rain pours down.",
    ]
    lines += [f'{i},yt{i},0,"{c}"' for i, c in enumerate(caps)]
    corpus.write_text("\n".join(lines) + "\n")
    m = tmp_path / "boot"
    cli(
        "bootstrap",
        str(corpus),
        "-m",
        str(m),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "-q",
        env=env,
    )
    cfg = json.loads((m / "config.json").read_text())["config"]
    assert cfg["retrieval"] == "zeroshot"
    dec = json.loads((m / "decoder" / "decoder.json").read_text())["config"]
    assert dec["use_audio"] and dec["d_a"] == 384  # pseudo-audio: the tag-space vector
    r = cli(
        "caption",
        str(next((workspace / "audio").glob("test_*.wav"))),
        "-m",
        str(m),
        "--max-len",
        "6",
        "-q",
        env=env,
    )
    row = json.loads(r.stdout)
    assert row["guidance"] and all(g["caption"] in caps for g in row["guidance"])


_DOG, _SPEECH, _RAIN = "/m/0bt9lr", "/m/09x0r", "/m/06mb1"
LABELLED_ROWS = [
    ("a dog barks", [_DOG]),
    ("a dog is barking loudly", [_DOG]),
    ("a man speaks", [_SPEECH]),
    ("a man is talking", [_SPEECH]),
    ("rain falls on a roof", [_RAIN]),
    ("heavy rain pours down", [_RAIN]),
    ("a dog barks as a man speaks", [_DOG, _SPEECH]),
    ("a man talks in the rain", [_SPEECH, _RAIN]),
]


def labelled_manifest(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A tiny caption manifest whose clips carry AudioSet mids, and an env with an (empty)
    AudioSet folder, as `bootstrap` needs to build the label-grounded captioner."""
    labels = tmp_path / "audioset"
    labels.mkdir()
    (labels / "unbalanced_train_segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n"
    )
    (labels / "ontology.json").write_text("[]")
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"path": f"c{i}.wav", "caption": c, "mids": m}) + "\n"
            for i, (c, m) in enumerate(LABELLED_ROWS)
        )
    )
    return manifest, {**env, "AUDIOCAP_AUDIOSET_DIR": str(labels)}


def test_label_grounded_bootstrap(tmp_path: Path, env: dict[str, str], workspace: Path) -> None:
    """`bootstrap` on a manifest with a mids column builds the label-grounded captioner: its
    decoder in decoder/, `caption` and `eval` use it, and a rerun with the state kept trains
    nothing again."""
    from audiocap_cli.generation.decoder import GuidedDecoder
    from audiocap_cli.pipeline.captioner import Captioner

    manifest, env = labelled_manifest(tmp_path, env)
    m = tmp_path / "boot"
    args = (
        "bootstrap",
        str(manifest),
        "-m",
        str(m),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--keep-state",
        "-q",
    )
    cli(*args, env=env)
    assert sorted(p.name for p in m.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "decoder",
        "index",
    ]  # the decoder and nothing beside it (an index version is a hidden folder)
    # the pool's own caption: at margin 0 this barely trained decoder's hypotheses lose to it, and
    # the line says the caption is retrieved (a corpus caption); with --pool-margin inf, never
    # (the default margin: test_grounded's run of the shipped default)
    clip = str(next((workspace / "audio").glob("test_*.wav")))
    rows = [
        json.loads(
            cli(
                "caption", clip, "-m", str(m), "--max-len", "6", "-q", "--pool-margin", p, env=env
            ).stdout
        )
        for p in ("0", "inf")
    ]
    assert rows[0].get("retrieved") is True and rows[0]["caption"] in {c for c, _ in LABELLED_ROWS}
    assert "retrieved" not in rows[1] and rows[1]["caption"] not in {c for c, _ in LABELLED_ROWS}
    # the paper's table for a label-grounded model: its retrieval row reads pooled scores as `caption` does
    r = cli(
        "eval",
        "--dataset",
        str(workspace),
        "--split",
        "test",
        "-m",
        str(m),
        "--scope",
        "all",
        "--beam-size",
        "1",
        "-q",
        env=env,
    )
    names = [row.get("system") or row.get("name") for row in json.loads(r.stdout)]
    assert "Label-Retrieval" in names and "Ours (GT)" in names
    assert isinstance(Captioner(m).decoder, GuidedDecoder)
    log = (m / "decoder" / "metrics.jsonl").read_text()
    cli(*args, env=env)  # state kept: a rerun (as after an interruption) trains nothing again
    assert (m / "decoder" / "metrics.jsonl").read_text() == log
