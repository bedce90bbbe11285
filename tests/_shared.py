"""Constants and helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from audiocap_cli.generation.decoder import DecoderConfig, GuidedDecoder
from audiocap_cli.generation.lm import FrozenLM

# Generated inputs that the benchmarks use too (a sparse long WAV, the synthetic dataset and its
# tiny model) live in bench/speed/_fixtures.py, so that bench/ never imports from tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "speed"))
from _fixtures import CLASSES, long_wav, make_model, make_workspace  # noqa: E402, F401

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
