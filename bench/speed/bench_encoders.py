"""Seconds per 10 s clip of the two AudioSet taggers, YAMNet and EfficientAT mn04_as, in one run.

    .venv/bin/python bench/speed/bench_encoders.py [--clips 16] [--batch 16] [--threads 2]
        [--repeats 3] [--synthetic]

Both encoders as load_encoder() gives them, fed what the pipeline feeds them: batches of 10 s
windows (ClipPolicy), each read at the encoder's own rate with audiocap_cli.audio.io.
Clips come from ../shared/data/sounds (animals, baby cries, Tux Paint effects) when present,
else synthetic noise. Two cases:
  padded: each clip once, zero-padded to 10 s (YAMNet hears the whole window; EfficientAT
          cuts the padding off, so short clips cost it less);
  full:   each window filled with 10 s of audio (the clip repeated), the cost of long audio.
After one warm-up pass, the best of ``--repeats`` interleaved runs; prints seconds per clip
and the ratio EfficientAT / YAMNet (above 1: EfficientAT is slower).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _fixtures import best_times

SOUNDS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sounds"
CLIP_SECONDS = 10.0


def clip_paths(limit: int) -> list[Path]:
    if not SOUNDS.is_dir():
        return []
    found = (
        sorted(SOUNDS.glob("animals_cc0/*.mp3"))
        + sorted(SOUNDS.glob("esc10_baby_cry/*.mp3"))
        + sorted(SOUNDS.glob("tuxpaint/audio/*.ogg"))
    )
    return found[:limit]


def windows(paths: list[Path], n: int, rate: int, full: bool, seed: int = 0) -> torch.Tensor:
    """``n`` 10 s windows at ``rate``: the clips (cycled), padded with zeros or repeated to
    fill the window; synthetic noise when there are no clips."""
    size = int(CLIP_SECONDS * rate)
    if not paths:
        rng = np.random.default_rng(seed)
        out = 0.1 * rng.standard_normal((n, size)).astype(np.float32)
        if not full:  # 1-10 s of noise, then zeros
            for row in out:
                row[int(rng.uniform(1, CLIP_SECONDS) * rate) :] = 0.0
        return torch.from_numpy(out)
    from audiocap_cli.audio import io

    waves = [io.load(p, rate) for p in paths]
    out = np.zeros((n, size), dtype=np.float32)
    for i in range(n):
        w = waves[i % len(waves)]
        if full:
            w = np.tile(w, -(-size // len(w)))
        w = w[:size]
        out[i, : len(w)] = w
    return torch.from_numpy(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clips", type=int, default=16, help="windows per case")
    ap.add_argument("--batch", type=int, default=16, help="windows per encode() call")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="noise even if real clips exist")
    args = ap.parse_args()

    from audiocap_cli.audio.encoders import load_encoder

    torch.set_num_threads(args.threads)
    paths = [] if args.synthetic else clip_paths(args.clips)
    source = f"{len(paths)} real clips from {SOUNDS}" if paths else "synthetic noise"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {source}")
    encoders = {"yamnet": load_encoder("yamnet"), "efficientat": load_encoder("efficientat")}

    for full in (False, True):
        inputs = {
            name: windows(paths, args.clips, enc.sample_rate, full)
            for name, enc in encoders.items()
        }

        def run(name: str) -> Callable[[], object]:
            enc, waves = encoders[name], inputs[name]
            return lambda: [
                enc.encode(waves[i : i + args.batch]) for i in range(0, len(waves), args.batch)
            ]

        times = best_times([run(name) for name in encoders], args.repeats)
        per_clip = {name: t / args.clips for name, t in zip(encoders, times)}
        case = "full 10 s windows" if full else "clips padded to 10 s"
        print(f"{case}, {args.clips} windows in batches of {args.batch}:")
        for name, s in per_clip.items():
            print(
                f"  {name:<12} {s * 1000:8.1f} ms per 10 s clip  {CLIP_SECONDS / s:7.0f}x real time"
            )
        print(f"  ratio efficientat / yamnet: {per_clip['efficientat'] / per_clip['yamnet']:.2f}")


if __name__ == "__main__":
    main()
