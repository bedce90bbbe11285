"""YAMNet encoder throughput on 10 s clips: batched + fused + channels-last vs a naive baseline.

    .venv/bin/python bench/speed/bench_yamnet.py [--clips 32] [--batch 16] [--threads N] [--chunks 16,64]
        [--device cuda] [--weights SAVEDMODEL_DIR] [--real]

Prints clips/s and the real-time multiple (audio seconds per wall second) for
  naive:     one clip at a time, batch norm unfused, contiguous NCHW;
  optimised: load_encoder("yamnet") as shipped (BN folded, channels-last), batched;
and the ratio. Goal: >= 150x real time on 2 CPU cores (YAMNet ~2.8 GFLOP per 10 s clip).
--real also times the clips of ../shared/data/sounds (resampled with scipy) when present.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _fixtures import best_times

from audiocap_cli.audio.encoders import load_encoder
from audiocap_cli.audio.encoders.yamnet import load_yamnet
from audiocap_cli.resources import shipped

SR = 16000
CLIP_SECONDS = 10.0
# Multiply-adds of the YAMNet body per 96x64 patch, counted from LAYER_DEFS (~69 M); x2 FLOP.
FLOP_PER_CLIP = 2.8e9


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Best wall time of ``repeats`` runs of fn() (after one warm-up)."""
    return best_times([fn], repeats)[0]


def report(label: str, seconds: float, clips: int) -> float:
    rate = clips / seconds
    print(
        f"{label:<34} {rate:8.2f} clips/s  {rate * CLIP_SECONDS:8.1f}x real time  "
        f"{rate * FLOP_PER_CLIP / 1e9:6.1f} GFLOP/s"
    )
    return rate


def real_clips(limit: int) -> list[np.ndarray]:
    import soundfile as sf
    from scipy.signal import resample_poly

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sounds"
    if not root.is_dir():
        print(f"(no {root}: skipping real clips)")
        return []
    waves = []
    for path in (
        sorted(root.glob("tau_scenes_1s/audio/*.wav"))[:limit]
        + sorted(root.glob("tuxpaint/audio/*.ogg"))[:limit]
    ):
        x, sr = sf.read(path, dtype="float32", always_2d=True)
        x = x.mean(1)
        g = np.gcd(sr, SR)
        waves.append(resample_poly(x, SR // g, sr // g).astype(np.float32))
    return waves


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="clips per encode() call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--chunks", default="", help="also sweep chunk_patches, e.g. 16,32,64,128")
    ap.add_argument(
        "--weights", default=None, help="YAMNet SavedModel dir (default: the shipped one)"
    )
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time the GPU path too")
    ap.add_argument("--real", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clips} clips of {CLIP_SECONDS:.0f} s"
    )

    waves = torch.from_numpy(
        (
            0.1 * np.random.default_rng(0).standard_normal((args.clips, int(SR * CLIP_SECONDS)))
        ).astype(np.float32)
    )
    weights = Path(args.weights) if args.weights else shipped("yamnet")
    fast = load_encoder("yamnet", weights=str(weights))
    naive = load_yamnet(weights, fused=False, channels_last=False)

    def run_naive() -> None:
        for w in waves:
            naive.encode(w[None])

    def run(model) -> None:  # type: ignore[no-untyped-def]
        for i in range(0, len(waves), args.batch):
            model.encode(waves[i : i + args.batch])

    t_naive, t_fast = best_times([run_naive, lambda: run(fast)], args.repeats)
    base = report("naive (1 clip, unfused, NCHW)", t_naive, len(waves))
    opt = report(f"optimised (batch {args.batch}, fused, NHWC)", t_fast, len(waves))
    print(
        f"speed-up: {opt / base:.2f}x   goal >= 150x real time: {'met' if opt * CLIP_SECONDS >= 150 else 'NOT met'}"
    )
    # Same outputs, so the speed is not bought with accuracy.
    diff = (naive.encode(waves[:2]).frames - fast.encode(waves[:2]).frames).abs().max().item()
    print(f"max |naive - optimised| embedding difference: {diff:.2e}")
    for chunk in [int(c) for c in args.chunks.split(",") if c]:
        fast.chunk_patches = chunk
        report(f"  chunk_patches={chunk}", timed(lambda: run(fast), args.repeats), len(waves))

    if args.device != "cpu":
        gpu = load_encoder("yamnet", weights=str(weights), device=args.device)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

        def run_gpu() -> None:
            gpu.encode(waves)
            sync()

        report(
            f"{args.device} (all {len(waves)} clips at once)",
            timed(run_gpu, args.repeats),
            len(waves),
        )
        cpu_out, gpu_out = fast.encode(waves[:4]), gpu.encode(waves[:4])
        print(
            f"max |cpu - {args.device}| embedding {((cpu_out.frames - gpu_out.frames.cpu()).abs().max().item()):.2e}"
            f" score {((cpu_out.scores - gpu_out.scores.cpu()).abs().max().item()):.2e}"
        )

    if args.real:
        clips = real_clips(64)
        if not clips:
            print("(no real clips found)")
        else:
            total = sum(len(c) for c in clips) / SR
            t = timed(lambda: [fast.encode(torch.from_numpy(c)[None]) for c in clips], 1)
            print(
                f"real clips: {len(clips)} clips, {total:.0f} s of audio in {t:.2f} s "
                f"({total / t:.0f}x real time, one clip at a time, lengths vary)"
            )


if __name__ == "__main__":
    main()
