"""`audiocap merge --expect` at 10 M clips: peak memory (RSS) and time, against the previous
implementation's algorithm.

    .venv/bin/python bench/speed/bench_merge.py [--n 10000000] [--shards 16] [--work DIR]
        [--no-baseline] [--no-missing] [--keep]

Generates, under WORK (default: a temporary folder, deleted at the end unless --keep):

* ``--n`` synthetic input paths (``/archive/DDD/clip_NNNNNNNN.flac``, 1,000 folders; the files
  need not exist) in ``paths.txt``, the expected list;
* ``--shards`` shard outputs ``part_I.jsonl``, one caption record per path (~200 bytes: path,
  window, caption, confidence, three tags; 1% error records), split by ``shard_of``'s rule.

Then runs, each in its own process, with peak RSS from ``os.wait4`` (that process alone):

1. ``audiocap merge part_*.jsonl --expect - -o merged.jsonl < paths.txt``: the passing merge;
2. the same with the last shard left out (unless --no-missing): a failing merge, which also
   looks for the missing paths under other spellings (one ``lstat`` per record);
3. ``audiocap merge`` of a 1,000-record shard: the interpreter and imports alone;
4. the previous implementation's algorithm (unless --no-baseline): ``expand_inputs`` lists the
   expected paths (and resolves each, to de-duplicate), the check keeps a set of the record
   paths and a set of 16-byte record digests, then the write pass.

Prints seconds and peak RSS of each run, and the ratios new / previous.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FOLDERS = 1000
TAGS = [["Dog", 0.91], ["Animal", 0.88], ["Bark", 0.42]]

# The check and merge of audiocap before the streaming merge (scale/shards.py then), kept here
# as the baseline: every expected path listed and resolved, a set of paths, a set of digests.
PREVIOUS = r"""
import hashlib, json, os, sys
from audiocap_cli.pipeline.records import expand_inputs

files = sys.argv[1:]
seen, paths, bad = set(), set(), 0
for name in files:
    with open(name, encoding="utf-8", errors="replace") as f:
        for line in f:
            obj = json.loads(line) if line.endswith("\n") else None
            if not isinstance(obj, dict):
                bad += 1
                continue
            raw = json.dumps([obj["path"], obj.get("start")]).encode("utf-8", "surrogateescape")
            k = hashlib.blake2b(raw, digest_size=16).digest()
            bad += k in seen
            seen.add(k)
            paths.add(str(obj["path"]))
expected = expand_inputs(["-"], sys.stdin)
missing = [p for p in expected if p not in paths]
if bad or missing:
    sys.exit(1)
with open(os.devnull, "w") as out:
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as f:
            for line in f:
                out.write(line)
"""


def shard_of(path: str, n: int) -> int:
    """scale.shards.shard_of, repeated here so that generating needs no audiocap import."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def generate(work: Path, n: int, shards: int) -> list[Path]:
    parts = [work / f"part_{i}.jsonl" for i in range(1, shards + 1)]
    outs = [open(p, "w", encoding="utf-8", buffering=1 << 20) for p in parts]
    tags = json.dumps(TAGS)
    with open(work / "paths.txt", "w", encoding="utf-8", buffering=1 << 20) as listing:
        for i in range(n):
            path = f"/archive/{i % FOLDERS:03d}/clip_{i:08d}.flac"
            listing.write(path + "\n")
            if i % 100 == 99:
                line = json.dumps({"path": path, "error": "not audio", "error_type": "AudioError"})
            else:
                line = (
                    f'{{"path": "{path}", "start": 0.0, "end": 10.0, "caption": "A dog barks '
                    f'while cars pass by on a wet street.", "confidence": 0.{i % 97:02d}, '
                    f'"tags": {tags}}}'
                )
            outs[shard_of(path, shards) - 1].write(line + "\n")
    for f in outs:
        f.close()
    return parts


def measure(cmd: list[str], stdin: Path | None, stdout: Path | None) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit status) of one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    fout = open(stdout, "wb") if stdout else subprocess.DEVNULL
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    for f in (fin, fout):
        if hasattr(f, "close"):
            f.close()
    if err.strip():
        print("   ", err.strip().splitlines()[-1])
    return seconds, usage.ru_maxrss / 1024, p.returncode  # ru_maxrss: KiB on Linux -> MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000, help="expected paths = records")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated files")
    ap.add_argument("--no-baseline", action="store_true", help="skip the previous algorithm")
    ap.add_argument("--no-missing", action="store_true", help="skip the failing merge")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="audiocap-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "audiocap_cli", "merge"]
    try:
        t0 = time.perf_counter()
        parts = generate(work, args.n, args.shards)
        size = sum(p.stat().st_size for p in parts) / 1e9
        print(
            f"generated {args.n:,} records in {args.shards} shards ({size:.2f} GB) in "
            f"{time.perf_counter() - t0:.0f} s under {work}"
        )
        tiny = work / "tiny.jsonl"
        with open(parts[0], encoding="utf-8") as f, open(tiny, "w", encoding="utf-8") as out:
            out.writelines(line for _, line in zip(range(1000), f))

        rows: dict[str, tuple[float, float, int]] = {}
        merged = work / "merged.jsonl"
        rows["merge, 1,000 records (start-up)"] = measure([*cli, str(tiny)], None, None)
        rows["merge --expect - -o FILE"] = measure(
            [*cli, *map(str, parts), "--expect", "-", "-o", str(merged)], work / "paths.txt", None
        )
        if rows["merge --expect - -o FILE"][2] != 0:
            sys.exit("the merge failed")
        if merged.stat().st_size != sum(p.stat().st_size for p in parts):
            sys.exit("the merged file is not the shards' concatenation")
        merged.unlink()
        if not args.no_missing:
            rows["merge, last shard missing (fails)"] = measure(
                [*cli, *map(str, parts[:-1]), "--expect", "-", "-o", str(merged)],
                work / "paths.txt",
                None,
            )
            if rows["merge, last shard missing (fails)"][2] != 1 or merged.exists():
                sys.exit("the failing merge did not fail cleanly")
        if not args.no_baseline:
            rows["previous algorithm"] = measure(
                [sys.executable, "-c", PREVIOUS, *map(str, parts)], work / "paths.txt", None
            )

        print(f"\n| run ({args.n:,} records) | seconds | peak RSS MiB | exit |")
        print("|---|---|---|---|")
        for name, (sec, rss, rc) in rows.items():
            print(f"| {name} | {sec:.1f} | {rss:.0f} | {rc} |")
        new = rows["merge --expect - -o FILE"]
        base = rows["merge, 1,000 records (start-up)"][1]
        print(f"\nmemory above start-up: {(new[1] - base) * 2**20 / args.n:.1f} bytes per record")
        if "previous algorithm" in rows:
            old = rows["previous algorithm"]
            print(f"new / previous: peak RSS {new[1] / old[1]:.3f}x, time {new[0] / old[0]:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
