"""At scale: `caption --shard I/N` and `caption --ray` give the single-process records
(a raw-frame index and a tiny-gpt2 decoder on a synthetic dataset, with the real YAMNet).

The Ray test starts a private local Ray instance (2 CPUs, no dashboard). It skips when Ray is
not installed, unless AUDIOCAP_REQUIRE_RAY=1 (CI installs the extra and sets it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _shared import make_workspace
from test_pipeline import cli, env  # noqa: F401 - fixtures, one instance per module

pytestmark = pytest.mark.slow
# One file per batch: batching changes float rounding in padded attention, which can flip a
# near-tie in the beam search of an untrained decoder; runs that batch alike agree bit for bit.
ARGS = ("--beam-size", "2", "--max-len", "8", "--batch-size", "1", "-q")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the synthetic dataset: it adds a broken file to the audio."""
    return make_workspace(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def setup(workspace: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    """The synthetic dataset, a raw-frame index and a tiny-gpt2 decoder, and one file that is
    not audio."""
    m = workspace / "scale_model"
    cli("build-index", str(workspace), "-m", str(m), "--raw", "-q", env=env)
    cli(
        "train-decoder",
        str(workspace),
        "-m",
        str(m),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "-q",
        env=env,
    )
    (workspace / "audio" / "broken.wav").write_bytes(b"RIFF not really")
    return m, sorted(str(p) for p in (workspace / "audio").glob("*.wav"))


def _lines(text: str) -> list[str]:
    """Records without their timings, as a sorted list of lines."""
    return sorted(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"})
        for line in text.splitlines()
    )


@pytest.fixture(scope="module")
def single(setup: tuple[Path, list[str]], env: dict[str, str]) -> str:
    m, files = setup
    r = cli("caption", str(m.parent / "audio"), "-m", str(m), *ARGS, env=env, check=False)
    assert r.returncode == 1 and "broken.wav" in r.stderr  # one bad file, the others captioned
    assert len(r.stdout.splitlines()) == len(files)
    return r.stdout


def test_shards_equal_unsharded_run(
    setup: tuple[Path, list[str]], env: dict[str, str], single: str, tmp_path: Path
) -> None:
    m, files = setup
    outs = []
    for i in (1, 2):
        out = tmp_path / f"part_{i}.jsonl"
        # shard 2 is given the files in reverse order: the partition is by path, not position
        inputs = files if i == 1 else files[::-1]
        cli(
            "caption",
            *inputs,
            "-m",
            str(m),
            "--shard",
            f"{i}/2",
            "-o",
            str(out),
            "--resume",
            *ARGS,
            env=env,
            check=False,
        )
        outs.append(out)
    parts = [_lines(o.read_text()) for o in outs]
    assert parts[0] and parts[1] and _lines(single) == sorted(parts[0] + parts[1])
    r = cli("merge", *map(str, outs), "--expect", str(m.parent / "audio"), env=env)
    assert _lines(r.stdout) == _lines(single)


def test_ray_equals_single_process(
    setup: tuple[Path, list[str]], env: dict[str, str], single: str, tmp_path: Path
) -> None:
    if os.environ.get("AUDIOCAP_REQUIRE_RAY") != "1":
        pytest.importorskip(
            "ray", reason="the ray extra is not installed (pip install 'audiocap-cli[ray]')"
        )
    m, files = setup
    out = tmp_path / "ray.jsonl"
    r = cli(
        "caption",
        str(m.parent / "audio"),
        "-m",
        str(m),
        "--ray",
        "local",
        "--workers",
        "2",
        "-o",
        str(out),
        *ARGS,
        env=env,
        check=False,
    )
    assert r.returncode == 1, r.stderr[
        -3000:
    ]  # the broken file is an error record, the job goes on
    assert _lines(out.read_text()) == _lines(single)
    assert [
        json.loads(line)["path"] for line in out.read_text().splitlines()
    ] == files  # input order kept


def test_torchrun_train_decoder_cli(
    setup: tuple[Path, list[str]], env: dict[str, str], tmp_path: Path
) -> None:
    """`torchrun -m audiocap_cli train-decoder`: rank 0 fills the caches first, writes alone."""
    m, _ = setup
    m2 = tmp_path / "model"
    shutil.copytree(m, m2, ignore=shutil.ignore_patterns("decoder"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "audiocap_cli",
        "train-decoder",
        str(m.parent),
        "-m",
        str(m2),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [
        json.loads(line) for line in (m2 / "decoder" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in rows] == [1, 2] and (
        m2 / "decoder" / "decoder.safetensors"
    ).is_file()
    assert r.stderr.count("decoder: ") == 1  # rank 0 reports
