"""torchrun data parallelism: 2 CPU processes (gloo) train the tiny retriever and decoder of
tests/ddp_script.py to the loss curves of one process with the same global batch, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).with_name("ddp_script.py"))
pytestmark = pytest.mark.slow


def _run(out: Path, epochs: int, procs: int) -> None:
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        if procs > 1
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*launch, SCRIPT, str(out), str(epochs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_match_one(tmp_path: Path) -> None:
    _run(tmp_path / "one", 3, 1)
    _run(tmp_path / "two", 2, 2)
    _run(tmp_path / "two", 3, 2)  # resumed under torchrun
    for stage, keys in (
        ("retriever", ("train_loss", "val_loss", "val_p_at_1")),
        ("decoder", ("train_loss", "val_nll", "lr")),
    ):
        one, two = (
            _rows(tmp_path / "one" / stage / "metrics.jsonl"),
            _rows(tmp_path / "two" / stage / "metrics.jsonl"),
        )
        assert [r["epoch"] for r in two] == [1, 2, 3]  # rank 0 alone logs, each epoch once
        for a, b in zip(one, two):
            for k in keys:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (stage, a["epoch"], k)
    assert (tmp_path / "two" / "decoder" / "decoder.safetensors").is_file()
    assert (tmp_path / "two" / "retriever" / "best.safetensors").is_file()
