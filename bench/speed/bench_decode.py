"""Decoding throughput: batched beam search with KV cache vs the naive baseline.

Clips are 10 s: T = 20 frames of D_a = 1024 (YAMNet's 0.48 s hop over 10 s), random.
Guidance: K = 5 captions per clip, from ../shared/data AudioCaps val captions when present,
else a built-in list. The decoder is random (``--decoder DIR`` loads a trained one): a random
decoder rarely emits EOS, so every clip runs the full ``max_len`` steps (the worst case).

    .venv/bin/python bench/speed/bench_decode.py [--clips 32] [--naive-clips 2] [--beam 4]
    .venv/bin/python bench/speed/bench_decode.py --decoder DIR   # a trained decoder

Goals (README): >= 1.5 clips/s, >= 20x decode_naive, peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audiocap_cli.generation.decoder import DecoderConfig, GuidedDecoder, load_decoder
from audiocap_cli.generation.decoding import DecodingOptions, decode, decode_naive
from audiocap_cli.generation.lm import load_lm

FRAMES_10S = 20  # YAMNet: 0.96 s windows at 0.48 s hop -> 20 frames in 10 s
YAMNET_DIM = 1024
CAPTIONS = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "captions"
    / "audiocaps_val.csv"
)
FALLBACK = [
    "a dog barks while cars pass by",
    "rain falls on a metal roof",
    "a man speaks over loud wind",
    "birds chirp in the distance",
    "an engine idles and then revs",
    "people talk in a crowded room",
    "water runs from a faucet",
    "a baby cries and a woman speaks",
    "thunder rumbles as rain pours",
    "a siren wails and fades away",
]


def captions() -> list[str]:
    if CAPTIONS.is_file():
        with open(CAPTIONS, newline="", encoding="utf-8") as f:
            return [r["caption"] for r in csv.DictReader(f)]
    print(f"note: {CAPTIONS} not found; using built-in captions", file=sys.stderr)
    return FALLBACK


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--naive-clips", type=int, default=2)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=30)
    ap.add_argument("--guidance", choices=["concat", "separate"], default="concat")
    ap.add_argument(
        "--decoder",
        type=Path,
        default=None,
        help="a trained decoder folder (default: a random decoder)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = load_lm("smollm2")
    if args.decoder is not None:
        dec = load_decoder(args.decoder, lm)
    else:
        torch.manual_seed(0)
        dec = GuidedDecoder(
            DecoderConfig(lm="smollm2", d_l=lm.dim, d_a=YAMNET_DIM, guidance=args.guidance), lm
        )
    print(
        f"load: {time.perf_counter() - t0:.1f} s, rss {peak_rss_gb():.2f} GB, torch threads {torch.get_num_threads()}"
    )

    rng = np.random.default_rng(0)
    pool = captions()
    n = max(args.clips, args.naive_clips)
    guidance = [[pool[i] for i in rng.choice(len(pool), 5, replace=False)] for _ in range(n)]
    frames = torch.from_numpy(rng.standard_normal((n, FRAMES_10S, dec.cfg.d_a)).astype(np.float32))
    # the search alone: no repeat penalty, no hypothesis selection (`caption` adds both)
    opts = DecodingOptions(
        beam_size=args.beam, max_len=args.max_len, select="score", repeat_penalty=0.0
    )

    decode(dec, guidance[:2], frames[:2], opts)  # warm-up (allocator, kernels)
    t = time.perf_counter()
    fast = decode(dec, guidance[: args.clips], frames[: args.clips], opts)
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    slow = decode_naive(dec, guidance[: args.naive_clips], frames[: args.naive_clips], opts)
    slow_s = time.perf_counter() - t

    same = [a.tokens for a in fast[: args.naive_clips]] == [b.tokens for b in slow]
    fast_cps, slow_cps = args.clips / fast_s, args.naive_clips / slow_s
    steps = np.mean([len(d.tokens) for d in fast])
    print(
        f"batched+KV cache: {args.clips} clips in {fast_s:.2f} s = {fast_cps:.2f} clips/s "
        f"(beam {args.beam}, mean {steps:.1f} tokens, guidance {dec.cfg.guidance})"
    )
    print(f"naive:            {args.naive_clips} clips in {slow_s:.2f} s = {slow_cps:.3f} clips/s")
    print(
        f"speed-up: {fast_cps / slow_cps:.1f}x (goal >= 20x); clips/s goal >= 1.5: "
        f"{'met' if fast_cps >= 1.5 else 'NOT met'}; same tokens as naive: {same}"
    )
    print(f"peak RSS: {peak_rss_gb():.2f} GB (goal <= 1.5 GB)")
    print(f"example: {fast[0].text!r}")


if __name__ == "__main__":
    main()
