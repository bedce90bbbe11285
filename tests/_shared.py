"""Constants and helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from audiocap_cli.decoder import DecoderConfig, GuidedDecoder
from audiocap_cli.lm import FrozenLM

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(
    JAVA is None, reason="no `java` on PATH (CI installs openjdk-17-jre-headless)"
)

# The reference example: two clips with five references each.
EXAMPLE_REFS = {
    "a": [
        "a dog is barking and a man is speaking",
        "a man talks as a dog barks",
        "dogs bark while someone speaks",
        "a dog barks in the distance",
        "a person talks and a dog barks",
    ],
    "b": [
        "water runs from a tap",
        "a faucet is running water into a sink",
        "water flows steadily",
        "someone fills a sink with water",
        "running water splashes",
    ],
}

D_A = 16  # small audio frames for decoder tests


def make_decoder(lm: FrozenLM, **kw: object) -> GuidedDecoder:
    """A seeded tiny-gpt2 GuidedDecoder in eval mode."""
    torch.manual_seed(0)
    cfg = DecoderConfig(**{"lm": "tiny-gpt2", "d_l": 64, "d_a": D_A, **kw})  # type: ignore[arg-type]
    return GuidedDecoder(cfg, lm).eval()


def clotho_validation_rows(n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the dev data's Clotho validation CSV; skips the test when the
    dev data or Java is absent."""
    import csv
    from pathlib import Path

    src = (
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "data"
        / "captions"
        / "clotho_validation.csv"
    )
    if not src.is_file():
        pytest.skip(f"dev data absent ({src})")
    if JAVA is None:
        pytest.skip("no `java` on PATH")
    with src.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))[:n]


def long_wav(
    path: "str | os.PathLike[str]", seconds: float, rate: int = 8000, tone_seconds: float = 10.0
) -> None:
    """A 16-bit mono WAV whose header declares ``seconds`` of audio: ``tone_seconds`` of a 440 Hz
    tone, then silence left as a sparse hole by ``truncate``, so that a 10-hour file costs a few
    hundred KB of disk and no time to write (used by test_hostile and bench/bench_long_audio)."""
    import struct

    import numpy as np

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
