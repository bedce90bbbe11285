"""The shipped default's decoder in a seed ensemble, as a model directory to score.

Trains what `audiocap bootstrap audiocaps_train.csv --val audiocaps_val.csv --epochs 8
--batch-size 64 --ensemble N` trains beside its seed-0 decoder (the shipped one, which that
command's seed 0 reproduces): the decoders of seeds 1..N-1 (`grounded.DecoderJob`, about 25 min
each on 2 cores once the LM features are cached), into OUT/runs/seed-S (resumable; a finished
one is skipped). OUT becomes a model directory: the default's config and index, its decoder as
``decoder/``, the members rounded to float16 (as a shipped model holds them) in
``ensemble/seed-S/``. With ``--members 1,2`` only those seeds join (e.g. ``--members 1`` for
the ensemble of two after training N = 3). Then:

    python bench/grounded_report.py -m OUT --no-ablations

Needs ../shared/data. Usage: python bench/ensemble_default.py N OUT [--members S,S]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT.parent / "shared" / "data" / "captions"

from audiocap_cli import grounded, models  # noqa: E402
from audiocap_cli import labelspace as ls  # noqa: E402
from audiocap_cli.config import atomic_save_safetensors  # noqa: E402
from audiocap_cli.decoder import DECODER_CONFIG, DECODER_WEIGHTS  # noqa: E402
from audiocap_cli.model import ModelDir  # noqa: E402

EPOCHS, BATCH = 8, 64  # the shipped default's command (its model.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, help="ensemble size: seeds 0..N-1 (0 is the shipped decoder)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--members", default=None, help="comma-separated seeds that join (default: 1..N-1)")
    args = ap.parse_args()
    if not CAPTIONS.is_dir():
        raise SystemExit(f"{CAPTIONS}: not found (needs the development data)")
    seeds = range(1, args.n)
    joining = [int(x) for x in args.members.split(",")] if args.members else list(seeds)
    default, md = models.resolve(None), ModelDir(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default / "config.json", md.config_path)
    if not md.index.exists():
        shutil.copytree(default / "index", md.index)
    shutil.rmtree(md.decoder, ignore_errors=True)
    shutil.copytree(models.SHIPPED_ROOT / models.DEFAULT_MODEL / "decoder", md.decoder)
    t0 = time.perf_counter()
    lab = grounded.read_labelled(CAPTIONS / "audiocaps_train.csv")
    val = grounded.read_labelled(CAPTIONS / "audiocaps_val.csv")
    p = grounded.plan(lab, ls.LabelSpaceConfig(), 5, None, val)
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    job = grounded.DecoderJob.prepare(p, lab, ls.LabelSpaceConfig(), 5, "smollm2", BATCH, say=say)
    shutil.rmtree(md.ensemble, ignore_errors=True)
    for seed in seeds:
        run = job.train(args.out / "runs" / f"seed-{seed}", EPOCHS, seed, keep_state=True)
        if seed in joining:
            dst = md.ensemble / grounded.ensemble_member(seed)
            dst.mkdir(parents=True)
            shutil.copyfile(run / DECODER_CONFIG, dst / DECODER_CONFIG)
            w = load_file(str(run / DECODER_WEIGHTS))
            atomic_save_safetensors({k: v.half() if v.is_floating_point() else v for k, v in w.items()},
                                    dst / DECODER_WEIGHTS)
        say(f"seed {seed}: {time.perf_counter() - t0:.0f} s")
    print(f"{args.out}: decoders {[str(d.relative_to(args.out)) for d in md.decoders()]}", file=sys.stderr)


if __name__ == "__main__":
    main()
