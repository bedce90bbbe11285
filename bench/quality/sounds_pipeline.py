"""The whole paper pipeline, as a user runs it, on the labelled real clips of ../shared/data/sounds.

Writes the dataset (captions from labels, bench/quality/sounds_dataset.py), then runs:
  audiocap train-retriever -> build-index -> train-decoder -> caption (test split) -> eval --scope all
and prints a few caption lines and the Table-1 layout. Usage:
  python bench/quality/sounds_pipeline.py [--work runs/sounds_pipeline] [--retriever-epochs 60] [--decoder-epochs 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sounds_dataset  # noqa: E402


def run(*args: str) -> str:
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args, "-q"], capture_output=True, text=True
    )
    shown = " ".join(
        args if len(args) < 12 else [*args[:3], f"... ({len(args) - 6} more)", *args[-3:]]
    )
    print(f"$ audiocap {shown}   [{time.time() - t0:.0f} s, exit {r.returncode}]", file=sys.stderr)
    if r.returncode not in (0, 1):
        print(r.stderr[-2000:], file=sys.stderr)
        raise SystemExit(r.returncode)
    if r.stderr.strip():
        print(r.stderr.strip(), file=sys.stderr)
    return r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("runs/sounds_pipeline"))
    ap.add_argument("--retriever-epochs", type=int, default=60)
    ap.add_argument("--decoder-epochs", type=int, default=8)
    ap.add_argument("--lm", default="smollm2")
    args = ap.parse_args()
    if not sounds_dataset.SOUNDS.is_dir():
        print(
            f"skipped: {sounds_dataset.SOUNDS} not found (needs ../shared/data/sounds)",
            file=sys.stderr,
        )
        return 0
    data, model = args.work / "data", args.work / "model"
    print(json.dumps(sounds_dataset.write_dataset(data)), file=sys.stderr)
    run("train-retriever", str(data), "-m", str(model), "--epochs", str(args.retriever_epochs))
    run("build-index", str(data), "-m", str(model))
    # batch 32, not the paper's 512: 187 clips x 5 captions give 29 steps per epoch instead of 2.
    run(
        "train-decoder",
        str(data),
        "-m",
        str(model),
        "--epochs",
        str(args.decoder_epochs),
        "--batch-size",
        "32",
        "--lm",
        args.lm,
        "--residual",
    )
    test = [json.loads(line)["path"] for line in (data / "test.jsonl").read_text().splitlines()]
    out = args.work / "test_captions.jsonl"
    run("caption", *test, "-m", str(model), "-o", str(out))
    print("# a few held-out captions")
    for line in out.read_text().splitlines()[::12]:
        r = json.loads(line)
        print(
            json.dumps(
                {
                    "path": r["path"].split("sounds/")[-1],
                    "caption": r.get("caption"),
                    "guidance": [g["caption"] for g in r.get("guidance", [])][:3],
                }
            )
        )
    table = run(
        "eval", "--dataset", str(data), "--split", "test", "-m", str(model), "--scope", "all"
    )
    print("# eval --scope all (JSON on stdout)")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
