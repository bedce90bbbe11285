"""torchrun data parallelism: 2 CPU processes (gloo) train the tiny retriever and decoder of
tests/ddp_script.py to the loss curves and weights of one process with the same global batch,
keep their parameters equal to each other, die with a launcher killed by SIGKILL, and resume
after that kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audiocap_cli.training.rundir import RunDir

SCRIPT = str(Path(__file__).with_name("ddp_script.py"))
pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _launch(out: Path, epochs: int, procs: int, *extra: str) -> list[str]:
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        if procs > 1
        else [sys.executable]
    )
    return [*launch, SCRIPT, str(out), str(epochs), *extra]


def _run(out: Path, epochs: int, procs: int) -> None:
    r = subprocess.run(
        _launch(out, epochs, procs), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _alive(pid: int) -> bool:
    """A process that exists and is no zombie (a zombie has ended; only its reaping waits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _kill_launcher_mid_epoch(out: Path, log: Path) -> None:
    """Start 2 ranks that stop in the decoder's 2nd epoch (its 1st is checkpointed), SIGKILL
    the torchrun launcher there, and check its workers end with it."""
    with open(log, "wb") as f:  # a file: orphaned workers would hold a pipe open
        launcher = subprocess.Popen(_launch(out, 3, 2, "hang"), stdout=f, stderr=f, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not (out / "hung").exists():
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "rank 0 never reached the 2nd epoch"
            time.sleep(0.1)
        workers = [int((out / f"pid{r}").read_text()) for r in (0, 1)]
        assert all(map(_alive, workers))
    finally:
        launcher.kill()  # SIGKILL: no chance to stop its workers itself
        launcher.wait()
    deadline = time.monotonic() + 5
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leave them running, whatever the outcome
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed launcher"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_processes_match_one_and_resume_after_a_kill(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, 3, 1)
    _kill_launcher_mid_epoch(two, tmp_path / "killed.log")
    before = _rows(two / "decoder" / "metrics.jsonl")
    assert [r["epoch"] for r in before] == [1]  # killed in epoch 2, after epoch 1's checkpoint
    _run(two, 3, 2)  # the same command resumes
    for stage, keys in (
        ("retriever", ("train_loss", "val_loss", "val_p_at_1")),
        ("decoder", ("train_loss", "val_nll", "lr")),
    ):
        a, b = _rows(one / stage / "metrics.jsonl"), _rows(two / stage / "metrics.jsonl")
        assert [r["epoch"] for r in b] == [1, 2, 3]  # rank 0 alone logs, each epoch once
        for x, y in zip(a, b):
            for k in keys:
                assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), (stage, x["epoch"], k)
    # resumed from epoch 1's checkpoint (not started over: epoch 1's row is the killed run's),
    # to the weights and optimiser state of the uninterrupted one-process run
    assert _rows(two / "decoder" / "metrics.jsonl")[0] == before[0]
    for stage in ("decoder", "retriever"):
        wa, _, sa = RunDir(one / stage).resume()
        wb, _, sb = RunDir(two / stage).resume()
        assert sa.epoch == sb.epoch == 3 and wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=f"{stage} {k}")
    assert (two / "decoder" / "decoder.safetensors").is_file()
    assert (two / "retriever" / "best.safetensors").is_file()
    # ddp_script.sync_check: one epoch of each training loop, the ranks on different slices
    for stage in ("decoder", "retriever"):
        r0, r1 = (load_file(two / "sync" / f"{stage}{r}.st") for r in (0, 1))
        ref = load_file(one / "sync" / f"{stage}0.st")
        start = load_file(one / "sync" / f"{stage}_start0.st")
        assert any(not torch.equal(ref[k], start[k]) for k in ref), f"{stage}: nothing trained"
        for k in ref:
            assert torch.equal(r0[k], r1[k]), f"{stage} {k}: the ranks' parameters differ"
            torch.testing.assert_close(r0[k], ref[k], rtol=1e-4, atol=1e-5, msg=f"{stage} {k}")
    # progress() adds up to the epoch's examples on every rank (21, not 22: the last batch of
    # 5 splits 3 + 2, and a rank does not count its share times the world size)
    assert [json.loads((two / "sync" / f"progress{r}.json").read_text()) for r in (0, 1)] == [
        21,
        21,
    ]
    assert json.loads((one / "sync" / "progress0.json").read_text()) == 21
