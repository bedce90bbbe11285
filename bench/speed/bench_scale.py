"""At scale: Ray workers, --shard and torchrun against one process, on the labelled real clips.

Needs ../shared/data/sounds and the ray extra (pip install 'audiocap-cli[ray]'). Builds, under
WORK (default /tmp/audiocap-bench-scale; kept, so a rerun skips what is built):

* a dataset from the real clips (bench/quality/sounds_dataset.py) and a model: a raw-frame YAMNet index
  of the train split plus a guided decoder on ``--lm`` (default tiny-gpt2, which keeps the runs
  short on 2 cores; smollm2 is the real one) trained for one epoch (its quality does not matter
  here; every run below uses this same model);
* captions of 200 clips, each run with a cold feature cache (features are computed, not read):
  one process; Ray with 1 and 2 workers (1 CPU each); --shard 1/2 and 2/2. Outputs are
  compared as sets of lines without the per-record timings;
* train-decoder and train-retriever with 1 process and with torchrun 2 processes (gloo), same
  global batch: seconds per epoch and the loss curves.

Usage: python bench/speed/bench_scale.py [WORK] [--lm tiny-gpt2|smollm2] [--clips 200]
(tiny-gpt2: ~20 min on 2 quiet cores)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOUNDS = ROOT.parent / "shared" / "data" / "sounds"
PY = sys.executable
N_CLIPS = 200


def run(
    *args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if r.returncode not in ok:
        sys.exit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0, r


def cold_env(work: Path, name: str) -> dict[str, str]:
    """A fresh AUDIOCAP_CACHE (no clip features) that shares the converted LM of the default cache."""
    cache = work / "caches" / name
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    shared_lm = Path(os.environ.get("AUDIOCAP_CACHE", Path.home() / ".cache" / "audiocap")) / "lm"
    if shared_lm.is_dir():
        (cache / "lm").symlink_to(shared_lm)
    return {**os.environ, "AUDIOCAP_CACHE": str(cache)}


def lines(path: Path) -> list[str]:
    """Records without their timings, sorted."""
    return sorted(
        json.dumps({k: v for k, v in json.loads(x).items() if k != "seconds"})
        for x in path.read_text().splitlines()
    )


def build(work: Path, env: dict[str, str], lm: str, n_clips: int) -> tuple[Path, list[str]]:
    data, model = work / "data", work / f"model-{lm}"
    if not (data / "train.jsonl").is_file():
        run(PY, str(ROOT / "bench" / "quality" / "sounds_dataset.py"), str(data), env=env)
    if not (model / "decoder" / "decoder.json").is_file():
        run(
            PY,
            "-m",
            "audiocap_cli",
            "build-index",
            str(data),
            "-m",
            str(model),
            "--raw",
            "-q",
            env=env,
        )
        run(
            PY,
            "-m",
            "audiocap_cli",
            "train-decoder",
            str(data),
            "-m",
            str(model),
            "--epochs",
            "1",
            "--lm",
            lm,
            "--batch-size",
            "64",
            "--val-split",
            "",
            "-q",
            env=env,
        )
    clips = sorted(
        json.loads(x)["path"]
        for s in ("train", "val", "test")
        for x in (data / f"{s}.jsonl").read_text().splitlines()
    )
    return model, clips[:n_clips]


def caption_runs(work: Path, model: Path, clips: list[str]) -> None:
    out = work / "out"
    out.mkdir(exist_ok=True)
    base = ("caption", "-m", str(model), "-q")
    listing = "\n".join(clips) + "\n"
    (work / "clips.txt").write_text(listing)
    runs = [
        ("1 process", "single", ()),
        ("Ray, 1 worker", "ray1", ("--ray", "local", "--workers", "1")),
        ("Ray, 2 workers", "ray2", ("--ray", "local", "--workers", "2")),
        ("--shard 1/2", "shard1", ("--shard", "1/2")),
        ("--shard 2/2", "shard2", ("--shard", "2/2")),
    ]
    rows, secs = [], {}
    for label, name, extra in runs:
        target = out / f"{name}.jsonl"
        t0 = time.perf_counter()
        r = subprocess.run(
            [PY, "-m", "audiocap_cli", *base, "-", "-o", str(target), *extra],
            input=listing,
            capture_output=True,
            text=True,
            env=cold_env(work, name),
        )
        secs[name] = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            sys.exit(f"{label} failed:\n{r.stderr[-3000:]}")
        n = len(target.read_text().splitlines())
        rows.append((label, n, secs[name]))
    ref = lines(out / "single.jsonl")
    print(
        f"\ncaptioning {len(clips)} real clips with {model.name} (beam 4, batch 16; cold feature cache; wall time incl. start-up)\n"
    )
    print("| run | records | seconds | clips/s | same records as 1 process |")
    print("|---|---|---|---|---|")
    for label, n, s in rows:
        name = next(nm for lb, nm, _ in runs if lb == label)
        same = (
            "-"
            if name == "single"
            else (
                "set with the other shard"
                if name.startswith("shard")
                else str(lines(out / f"{name}.jsonl") == ref)
            )
        )
        print(f"| {label} | {n} | {s:.1f} | {len(clips) / s:.2f} | {same} |")
    merged = sorted(lines(out / "shard1.jsonl") + lines(out / "shard2.jsonl"))
    print(
        f"\nshard 1/2 + shard 2/2 == unsharded, as a set of lines: {merged == ref} "
        f"({len(set(merged) & set(ref))} of {len(ref)} lines in common)"
    )
    # Batches of one file: no run's float rounding depends on which files share its batches.
    warm = cold_env(work, "batch1")
    for name, extra in (
        ("b1_single", ()),
        ("b1_shard1", ("--shard", "1/2")),
        ("b1_shard2", ("--shard", "2/2")),
    ):
        subprocess.run(
            [
                PY,
                "-m",
                "audiocap_cli",
                *base,
                "-",
                "-o",
                str(out / f"{name}.jsonl"),
                "--batch-size",
                "1",
                *extra,
            ],
            input=listing,
            capture_output=True,
            text=True,
            env=warm,
        )
    merged = sorted(lines(out / "b1_shard1.jsonl") + lines(out / "b1_shard2.jsonl"))
    print(f"the same with --batch-size 1: {merged == lines(out / 'b1_single.jsonl')}")
    print(f"Ray 2 workers / 1 worker throughput: {secs['ray1'] / secs['ray2']:.2f}x")


def ddp_runs(work: Path, model: Path, env: dict[str, str], lm: str) -> None:
    data = work / "data"
    cmds = {
        "train-decoder": ("--epochs", "3", "--batch-size", "64", "--val-split", "val", "--lm", lm),
        "train-retriever": ("--epochs", "10", "--batch-size", "32"),
    }
    for cmd, opts in cmds.items():
        stage = "decoder" if cmd == "train-decoder" else "retriever"
        curves = {}
        # 1 process with 1 and with 2 torch threads; torchrun gives each of its processes 1 thread
        for name, procs, threads in (("1p1t", 1, "1"), ("1p2t", 1, "2"), ("2p1t", 2, "1")):
            m = work / f"ddp_{stage}_{name}"
            shutil.rmtree(m, ignore_errors=True)
            shutil.copytree(model, m, ignore=shutil.ignore_patterns("decoder", "retriever"))
            launch = (
                [
                    PY,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={procs}",
                    "-m",
                ]
                if procs > 1
                else [PY, "-m"]
            )
            wall, _ = run(
                *launch,
                "audiocap_cli",
                cmd,
                str(data),
                "-m",
                str(m),
                "--no-resume",
                "-q",
                *opts,
                env={**env, "OMP_NUM_THREADS": threads},
            )
            curves[name] = (
                [json.loads(x) for x in (m / stage / "metrics.jsonl").read_text().splitlines()],
                wall,
            )
        val = "val_nll" if stage == "decoder" else "val_loss"
        print(
            f"\n{cmd} {' '.join(opts)}: 1 process (1 or 2 torch threads) vs torchrun 2 processes (gloo, 1 thread each)\n"
        )
        print(
            f"| epoch | s/epoch 1p1t | s/epoch 1p2t | s/epoch 2p | train loss 1p | train loss 2p | {val} 1p | {val} 2p |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for a, a2, b in zip(curves["1p1t"][0], curves["1p2t"][0], curves["2p1t"][0]):
            print(
                f"| {a['epoch']} | {a['seconds']:.1f} | {a2['seconds']:.1f} | {b['seconds']:.1f} | {a['train_loss']:.5f} | {b['train_loss']:.5f} "
                f"| {a.get(val, float('nan')):.5f} | {b.get(val, float('nan')):.5f} |"
            )
        print(
            "wall time incl. start-up: " + ", ".join(f"{k} {v[1]:.0f} s" for k, v in curves.items())
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", nargs="?", default="/tmp/audiocap-bench-scale")
    ap.add_argument("--lm", default="tiny-gpt2")
    ap.add_argument("--clips", type=int, default=N_CLIPS)
    ap.add_argument("--skip", choices=["caption", "ddp"], help="leave out one part")
    args = ap.parse_args()
    if not SOUNDS.is_dir():
        sys.exit(f"needs the labelled real clips in {SOUNDS}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    model, clips = build(work, env, args.lm, args.clips)
    if args.skip != "caption":
        caption_runs(work, model, clips)
    if args.skip != "ddp":
        ddp_runs(work, model, env, args.lm)


if __name__ == "__main__":
    main()
