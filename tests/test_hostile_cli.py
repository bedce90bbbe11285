"""Hostile outputs, caches and models (issue 36): each problem is one ``audiocap: error:`` line
on stderr, no traceback, exit status 2 for usage and configuration problems (a bad -m, option
value, dataset or split, an unusable -o or cache folder) and 1 for damaged model files (a
ModelNotFoundError, as a missing weight file already is)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def one_error(r: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    """``r`` exited ``code`` with exactly one stderr line (no blank line before it either), an
    ``audiocap: error:`` line saying each of ``says``."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("audiocap: error: "), r.stderr[-3000:]
    assert r.returncode == code, r.stderr
    for s in says:
        assert s in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("clip") / "noise.wav"
    sf.write(p, np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32), 16000)
    return p


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = {**os.environ, "AUDIOCAP_CACHE": str(tmp_path_factory.mktemp("cache"))}
    e.pop("AUDIOCAP_MODEL", None)
    return e


@pytest.fixture(scope="module")
def shipped(env: dict[str, str]) -> Path:
    """The shipped default model as its first use builds it into the cache (decoder files are
    links into the package: copies are made with the links followed). No LM is loaded."""
    from audiocap_cli.pipeline.registry import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOCAP_CACHE", env["AUDIOCAP_CACHE"])
        return resolve(None, env={})


def _copy(model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model, dst, symlinks=False)
    return dst


# ------------------------------------------------------------------ outputs and the cache


def test_output_a_folder(tmp_path: Path, clip: Path, env: dict[str, str]) -> None:
    one_error(cli("caption", str(clip), "-o", str(tmp_path), env=env), 2, str(tmp_path), "folder")


def test_cache_a_regular_file(tmp_path: Path, clip: Path, env: dict[str, str]) -> None:
    f = tmp_path / "cache"
    f.write_text("not a folder")
    one_error(
        cli("caption", str(clip), env={**env, "AUDIOCAP_CACHE": str(f)}), 2, str(f), "not a folder"
    )


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_output_on_a_full_disk(clip: Path, env: dict[str, str], tiny_model: Path) -> None:
    """ENOSPC while writing the records: exit 2 (the output cannot be written; no input is at
    fault), one line, no traceback. Also: without -q, stderr starts with no blank line. The
    session's tiny trained model keeps this cheap; the writer is the same for every model."""
    m = str(tiny_model)
    r = cli("caption", str(clip), "-m", m, env=env)  # the control: a normal run, with progress
    assert r.returncode == 0 and r.stdout.count("\n") == 1, r.stderr[-3000:]
    assert r.stderr.strip() and not r.stderr.startswith("\n"), r.stderr  # no blank line first
    one_error(
        cli("caption", str(clip), "-q", "-m", m, "-o", "/dev/full", env=env),
        2,
        "/dev/full",
        "No space",
    )


# ------------------------------------------------------------------ damaged model folders
# Run without -q: the error line must be the whole of stderr (no blank progress lines).


def test_corrupt_decoder_weights(
    tmp_path: Path, clip: Path, env: dict[str, str], shipped: Path
) -> None:
    m = _copy(shipped, tmp_path)
    (m / "decoder" / "decoder.safetensors").write_bytes(b"\x00" * 7)
    one_error(cli("caption", str(clip), "-m", str(m), env=env), 2, "decoder.safetensors")


def test_class_weights_saved_with_pickle(
    tmp_path: Path, clip: Path, env: dict[str, str], shipped: Path
) -> None:
    m = _copy(shipped, tmp_path)
    w = m / "index" / "class_weights.npy"
    np.save(w, np.array([{"a": 1}, 2.0], dtype=object), allow_pickle=True)
    one_error(cli("caption", str(clip), "-m", str(m), env=env), 2, str(w))


def test_local_lm_folder_with_a_pickle(tmp_path: Path, env: dict[str, str]) -> None:
    """A --lm folder whose pytorch_model.bin is a pickle torch refuses (weights_only): one line
    before anything ran."""
    from audiocap_cli.generation.lm import _tiny_gpt2
    from audiocap_cli.pipeline.modeldir import ModelConfig, ModelDir

    lm = tmp_path / "lm"
    model, tok = _tiny_gpt2()
    model.config.save_pretrained(lm)
    tok.save_pretrained(lm)
    (lm / "pytorch_model.bin").write_bytes(pickle.dumps(Path("/etc/passwd")))
    ModelDir(tmp_path / "m").init(ModelConfig())
    (tmp_path / "data").mkdir()
    r = cli(
        "train-decoder", str(tmp_path / "data"), "-m", str(tmp_path / "m"), "--lm", str(lm),
        env=env,
    )  # fmt: skip
    one_error(r, 2, str(lm), "pickle")


# ------------------------------------------------------------------ usage: exit status 2


@pytest.mark.parametrize("kind", ["unknown name", "empty folder", "a file", "missing path"])
def test_bad_model(tmp_path: Path, clip: Path, env: dict[str, str], kind: str) -> None:
    spec = {
        "unknown name": "no-such-model",
        "empty folder": str(tmp_path),
        "a file": str(clip),
        "missing path": str(tmp_path / "missing"),
    }[kind]
    one_error(cli("caption", str(clip), "-m", spec, env=env), 2, spec)
    r = cli("caption", str(clip), env={**env, "AUDIOCAP_MODEL": spec})
    one_error(r, 2, spec)


def test_hop_must_be_finite(clip: Path, env: dict[str, str]) -> None:
    r = cli("caption", str(clip), "--long-audio", "windows", "--hop", "inf", env=env)
    one_error(r, 2, "--hop", "finite")


def test_eval_bad_dataset_and_split(tmp_path: Path, env: dict[str, str]) -> None:
    one_error(cli("eval", "--dataset", "/nonexistent", env=env), 2, "/nonexistent")
    r = cli("eval", "--dataset", str(tmp_path), "--split", "bogus", env=env)
    one_error(r, 2, "bogus")
