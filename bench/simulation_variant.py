"""The default's recipe with another simulated training input, as a model directory to score.

Runs what `audiocap bootstrap audiocaps_train.csv -m OUT --val audiocaps_val.csv --epochs 8
--batch-size 64` runs (the shipped default's command), except that the decoder's training and
validation input is simulated with the labelsim.Simulation fields SPEC changes (labelsim.parse):
``confusable`` (intruders the encoder confuses with a present class, labelsim.CONFUSABLE) and
``heard_speech=1`` ("Speech" in the training input of captions that say someone speaks) are
the two measured in the README. About 27 min on 2 cores once the LM features are cached; the
run resumes from its last epoch. OUT/simulation.json records SPEC's Simulation. Then:

    python bench/grounded_report.py -m OUT --no-ablations [--simulation SPEC]

Needs ../shared/data. Usage: python bench/simulation_variant.py OUT SPEC   (e.g. confusable,heard_speech=1)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT.parent / "shared" / "data" / "captions"

from audiocap_cli import grounded, labelsim  # noqa: E402
from audiocap_cli.model import ModelConfig  # noqa: E402

EPOCHS, BATCH = 8, 64  # the shipped default's command (its model.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("spec", help="labelsim.Simulation fields to change, e.g. confusable,heard_speech=1")
    args = ap.parse_args()
    try:
        sim = labelsim.parse(args.spec)
    except ValueError as e:
        raise SystemExit(f"SPEC: {e}") from e
    if not CAPTIONS.is_dir():
        raise SystemExit(f"{CAPTIONS}: not found (needs the development data)")
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    lab = grounded.read_labelled(CAPTIONS / "audiocaps_train.csv")
    val = grounded.read_labelled(CAPTIONS / "audiocaps_val.csv")
    say(f"simulation: {sim}")
    grounded.train(lab, args.out, ModelConfig(encoder="yamnet"), val=val, epochs=EPOCHS, batch_size=BATCH,
                   sim=sim, say=say)
    say(f"{args.out}: score it with python bench/grounded_report.py -m {args.out} --no-ablations")


if __name__ == "__main__":
    main()
