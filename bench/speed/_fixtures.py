"""Generated inputs shared by the benchmarks and the tests: a sparse long WAV and a tiny synthetic
captioned dataset with its triplet-retriever model.

Benchmarks import this module from their own folder; tests/_shared.py puts this folder on
sys.path and re-exports it, so that nothing under bench/ imports from tests/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
# Three easily told apart sound classes of the synthetic dataset, three captions each.
CLASSES = {
    "hum": ["A low electric hum drones.", "A steady low hum.", "Low humming noise."],
    "beep": ["A high pitched beep sounds.", "High beeps repeat.", "An electronic beep beeps."],
    "hiss": ["Static noise hisses.", "White noise hisses steadily.", "A loud hiss of static."],
}


def long_wav(
    path: "str | os.PathLike[str]", seconds: float, rate: int = 8000, tone_seconds: float = 10.0
) -> None:
    """A 16-bit mono WAV whose header declares ``seconds`` of audio: ``tone_seconds`` of a 440 Hz
    tone, then silence left as a sparse hole by ``truncate``, so that a 10-hour file costs a few
    hundred KB of disk and no time to write."""
    import struct

    n = int(seconds * rate)
    data_bytes = 2 * n  # 10 h at 8 kHz: 576 MB, within RIFF's 4 GiB
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        2 * rate,
        2,
        16,
        b"data",
        data_bytes,
    )
    t = np.arange(min(n, int(tone_seconds * rate))) / rate
    with open(path, "wb") as f:
        f.write(header)
        f.write((0.3 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype("<i2").tobytes())
        f.truncate(len(header) + data_bytes)


def _wave(kind: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "hum":
        x = 0.5 * np.sin(2 * np.pi * rng.uniform(90, 140) * t)
    elif kind == "beep":
        x = 0.4 * np.sin(2 * np.pi * rng.uniform(2500, 3500) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    else:
        x = 0.3 * rng.standard_normal(len(t))
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_workspace(root: Path) -> Path:
    """The synthetic dataset in ``root``: the 3 CLASSES, train/val/test = 18/6/6 clips of
    1-2.5 s, manifests ``root/{train,val,test}.jsonl``."""
    rng = np.random.default_rng(0)
    counts = {"train": 6, "val": 2, "test": 2}
    for split, n in counts.items():
        rows = []
        for kind, caps in CLASSES.items():
            for i in range(n):
                path = root / "audio" / f"{split}_{kind}_{i}.wav"
                path.parent.mkdir(exist_ok=True)
                sf.write(path, _wave(kind, rng, rng.uniform(1.0, 2.5)), SR)
                rows.append({"id": path.stem, "path": str(path), "captions": caps})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _audiocap(*args: str, env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"audiocap {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
        )


def make_model(workspace: Path, env: dict[str, str]) -> Path:
    """A tiny triplet-retriever model of ``workspace`` in ``workspace/model`` (real shipped
    YAMNet; ~1 min)."""
    m = workspace / "model"
    _audiocap(
        "train-retriever",
        str(workspace),
        "-m",
        str(m),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "-q",
        env=env,
    )
    _audiocap("build-index", str(workspace), "-m", str(m), "-q", env=env)
    return m


def run_child(args: list[str], env: dict[str, str]) -> tuple[int, float, float, str, str]:
    """(exit status, wall seconds, peak RSS bytes, stdout, stderr) of one child process: its own
    ru_maxrss (os.wait4), not the benchmark's."""
    import tempfile
    import time

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return (
            os.waitstatus_to_exitcode(status),
            wall,
            usage.ru_maxrss * 1024.0,
            out.read().decode(),
            err.read().decode(),
        )


def best_times(fns: list, repeats: int) -> list[float]:  # type: ignore[type-arg]
    """Best wall time of each fn over ``repeats`` runs, after one warm-up run each; the runs
    are interleaved so that a busy machine hurts all alike."""
    import time

    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best
