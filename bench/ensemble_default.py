"""The shipped default's decoder and decoders of other seeds, as a model directory to score.

Trains what `audiocap bootstrap audiocaps_train.csv --val audiocaps_val.csv --epochs 8
--batch-size 64 --ensemble N` trains beside its seed-0 decoder (the shipped one, which that
command's seed 0 reproduces): the decoders of seeds 1..N-1 (`grounded.DecoderJob`, about 25 min
each on 2 cores once the LM features are cached), into OUT/runs/seed-S (resumable; a finished
one is skipped). OUT becomes a model directory of the default's config and index and the
decoders of ``--members`` (default: every seed 0..N-1; 0 is the shipped decoder), in float16 as
a shipped model holds them: the first as ``decoder/``, the others as ``ensemble/seed-S/``. So
``--members 0,1`` is the ensemble of two and ``--members 1`` seed 1 alone. Then:

    python bench/grounded_report.py -m OUT --no-ablations

Needs ../shared/data. Usage: python bench/ensemble_default.py N OUT [--members S,S,...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT.parent / "shared" / "data" / "captions"

from audiocap_cli import grounded, models  # noqa: E402
from audiocap_cli import labelspace as ls  # noqa: E402
from audiocap_cli.decoder import export_float16  # noqa: E402
from audiocap_cli.model import ModelDir  # noqa: E402

EPOCHS, BATCH = 8, 64  # the shipped default's command (its model.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, help="seeds 0..N-1 (0 is the shipped decoder)")
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--members",
        default=None,
        help="comma-separated seeds the model holds, the first as decoder/",
    )
    args = ap.parse_args()
    members = [int(x) for x in args.members.split(",")] if args.members else list(range(args.n))
    if not members or any(not 0 <= s < args.n for s in members):
        raise SystemExit(f"--members: seeds between 0 and {args.n - 1}")
    if not CAPTIONS.is_dir():
        raise SystemExit(f"{CAPTIONS}: not found (needs the development data)")
    default, md = models.resolve(None), ModelDir(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default / "config.json", md.config_path)
    if not md.index.exists():
        shutil.copytree(default / "index", md.index)
    t0 = time.perf_counter()
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    runs = {0: models.SHIPPED_ROOT / models.DEFAULT_MODEL / "decoder"}
    if args.n > 1:
        lab = grounded.read_labelled(CAPTIONS / "audiocaps_train.csv")
        val = grounded.read_labelled(CAPTIONS / "audiocaps_val.csv")
        p = grounded.plan(lab, ls.LabelSpaceConfig(), 5, None, val)
        job = grounded.DecoderJob.prepare(
            p, lab, ls.LabelSpaceConfig(), 5, "smollm2", BATCH, say=say
        )
        for seed in range(1, args.n):
            runs[seed] = job.train(
                args.out / "runs" / f"seed-{seed}", EPOCHS, seed, keep_state=True
            )
            say(f"seed {seed}: {time.perf_counter() - t0:.0f} s")
    for old in (md.decoder, md.ensemble):
        shutil.rmtree(old, ignore_errors=True)
    for i, seed in enumerate(members):
        export_float16(
            runs[seed], md.decoder if i == 0 else md.ensemble / grounded.ensemble_member(seed)
        )
    say(f"{args.out}: decoders {[str(d.relative_to(args.out)) for d in md.decoders()]}")


if __name__ == "__main__":
    main()
