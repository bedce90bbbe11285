"""Paired comparison of two systems on the same clips: per-clip METEOR and CIDEr-D differences,
with a bootstrap 95% interval over clips (2,000 resamples, seed 0).

Reads the folders that ``bench/quality/grounded_report.py --predictions DIR`` writes (``val.jsonl``,
``real.jsonl``: one line per clip with its caption and scores). A per-clip mean is not the
corpus score the report prints (METEOR pools its statistics over the corpus), but its
difference is what varies clip by clip, so it is what the interval is about.

The real clips are also compared by kind (``sounds_dataset.kinds``): "real events" (137 sound
events) and "real scenes" (200 one-second urban scenes, on which every system scores near 0
CIDEr-D, so they move METEOR only).

Usage: python bench/quality/compare_predictions.py BASELINE_DIR OTHER_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sounds_dataset import kinds  # noqa: E402

RESAMPLES = 2000
METRICS = ("meteor", "cider_d")


def subsets(stem: str, ids: list[str]) -> list[tuple[str, list[str]]]:
    """The rows to print for one file: all its clips, and for the real clips each kind apart."""
    if stem != "real":
        return [(stem, ids)]
    return [(stem, ids)] + [(f"real {kind}", sub) for kind, sub in kinds(ids).items()]


def read(path: Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("baseline", type=Path)
    ap.add_argument("other", type=Path)
    args = ap.parse_args()
    print(
        "| set | metric | other - baseline (x100, per-clip mean) | 95% interval | P(diff <= 0) | same caption |"
    )
    print("|---|---|---|---|---|---|")
    for path in sorted(args.baseline.glob("*.jsonl")):
        if not (args.other / path.name).is_file():  # e.g. a `grounded_report --sets real` run
            print(f"{path.name}: not in {args.other}, skipped", file=sys.stderr)
            continue
        a, b = read(path), read(args.other / path.name)
        ids = sorted(set(a) & set(b))
        if len(ids) != len(a) or len(ids) != len(b):
            raise SystemExit(f"{path.name}: the two runs scored different clips")
        for name, sub in subsets(path.stem, ids):
            same = sum(a[i]["caption"] == b[i]["caption"] for i in sub)
            rng = np.random.default_rng(0)
            draws = rng.integers(0, len(sub), (RESAMPLES, len(sub)))
            for m in METRICS:
                d = 100 * np.array([b[i][m] - a[i][m] for i in sub])
                boots = d[draws].mean(axis=1)
                lo, hi = np.percentile(boots, [2.5, 97.5])
                print(
                    f"| {name} | {m} | {d.mean():+.2f} | {lo:+.2f} .. {hi:+.2f} | {np.mean(boots <= 0):.3f} | {same}/{len(sub)} |"
                )


if __name__ == "__main__":
    main()
