"""Check that two runs printed the same records: `audiocap caption` JSONL files, or folders of
them (such as those `bench/quality/grounded_report.py --predictions DIR` writes).

Lines are compared as parsed JSON, in order, with the fields that measure time left out
(`seconds` by default). Exit 0 when every file is the same, 1 otherwise (the first differences
are printed). For refactors that must not change behaviour:

    audiocap caption ../shared/data/sounds -q > before.jsonl     # on the old commit
    audiocap caption ../shared/data/sounds -q > after.jsonl      # on the new one
    python scripts/same_captions.py before.jsonl after.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def records(path: Path, ignore: set[str]) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if isinstance(rec, dict):
                rec = {k: v for k, v in rec.items() if k not in ignore}
            out.append(rec)
    return out


def compare(a: Path, b: Path, ignore: set[str], show: int) -> int:
    """Number of differing lines between two JSONL files (a missing line counts)."""
    ra, rb = records(a, ignore), records(b, ignore)
    bad = [
        i for i in range(max(len(ra), len(rb))) if i >= len(ra) or i >= len(rb) or ra[i] != rb[i]
    ]
    for i in bad[:show]:
        print(f"{b}: line {i + 1} differs", file=sys.stderr)
        print(f"  - {json.dumps(ra[i]) if i < len(ra) else '(none)'}", file=sys.stderr)
        print(f"  + {json.dumps(rb[i]) if i < len(rb) else '(none)'}", file=sys.stderr)
    print(f"{a} ~ {b}: {len(ra)} and {len(rb)} records, {len(bad)} differ")
    return len(bad)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("before", type=Path, help="a JSONL file, or a folder of *.jsonl")
    ap.add_argument("after", type=Path, help="the same kind of path as BEFORE")
    ap.add_argument(
        "--ignore", default="seconds", help="comma-separated fields left out (default: seconds)"
    )
    ap.add_argument("--show", type=int, default=5, help="differences printed per file")
    args = ap.parse_args()
    ignore = {f for f in args.ignore.split(",") if f}
    if args.before.is_dir():
        names = sorted(
            {p.name for p in args.before.glob("*.jsonl")}
            | {p.name for p in args.after.glob("*.jsonl")}
        )
        pairs = [(args.before / n, args.after / n) for n in names]
    else:
        pairs = [(args.before, args.after)]
    bad = 0
    for a, b in pairs:
        if not a.exists() or not b.exists():
            print(f"missing: {a if not a.exists() else b}", file=sys.stderr)
            bad += 1
            continue
        bad += compare(a, b, ignore, args.show)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
