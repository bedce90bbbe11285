"""SCST fine-tuning of the shipped default's decoder, as a model directory to score.

Runs what `audiocap bootstrap audiocaps_train.csv --val audiocaps_val.csv --scst-steps N` runs
after its teacher forcing (`grounded.plan` with the val set, then `grounded.fine_tune`), started
from the shipped teacher-forced decoder, which that command's teacher forcing reproduces. OUT
becomes a model directory: the default's config and index, and the fine-tuned decoder. Rerun
with a larger N to resume (the SCST state is kept in OUT/decoder). Then:

    python bench/grounded_report.py -m OUT --no-ablations

Needs ../shared/data. Usage: python bench/scst_default.py STEPS OUT
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT.parent / "shared" / "data" / "captions"

from audiocap_cli import grounded, models  # noqa: E402
from audiocap_cli import labelspace as ls  # noqa: E402
from audiocap_cli.lm import load_lm  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[-1].strip())
    steps, out = int(sys.argv[1]), Path(sys.argv[2])
    if not CAPTIONS.is_dir():
        raise SystemExit(f"{CAPTIONS}: not found (needs the development data)")
    default = models.resolve(None)  # the shipped model, materialised in the cache
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default / "config.json", out / "config.json")
    if not (out / "index").exists():
        shutil.copytree(default / "index", out / "index")
    t0 = time.perf_counter()
    lab = grounded.read_labelled(CAPTIONS / "audiocaps_train.csv")
    val = grounded.read_labelled(CAPTIONS / "audiocaps_val.csv")
    p = grounded.plan(lab, ls.LabelSpaceConfig(), 5, None, val)
    grounded.fine_tune(
        p,
        lab,
        models.SHIPPED_ROOT / models.DEFAULT_MODEL / "decoder",
        out / "decoder",
        load_lm("smollm2"),
        steps,
        keep_state=True,
        say=lambda s: print(s, file=sys.stderr),
    )
    print(f"{out}: {steps} SCST steps, {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
