"""How YAMNet's pooled scores differ from labels, on the real clips whose label maps to one
AudioSet class (the 10 animals and 40 baby cries of ../shared/data/sounds), against what
labelspace.simulate_scores assumes: the labelled class's score, and how many other classes fire.

Usage: python bench/simulation_check.py   (needs ../shared/data; uses bench/bootstrap_report's cache)
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
if not (ROOT.parent / "shared" / "data").is_dir():
    sys.exit("../shared/data not found; this script needs the labelled real clips")

from bootstrap_report import load_clips, yamnet_scores  # noqa: E402

from audiocap_cli import grounded  # noqa: E402
from audiocap_cli.zeroshot import class_names  # noqa: E402

CLASS = {"cat": "Cat", "cow": "Cattle, bovinae", "dog": "Dog", "duck": "Duck", "frog": "Frog", "horse": "Horse",
         "owl": "Owl", "pig": "Pig", "rooster": "Chicken, rooster", "sheep": "Sheep", "baby": "Baby cry, infant cry"}
names = class_names()
clips = [c for c in load_clips(ROOT / "runs" / "sounds") if "animals_cc0" in c["path"] or "baby_cry" in c["path"]]
scores = np.stack([s.max(0) for s in yamnet_scores(clips, ROOT / "runs" / "bootstrap")])
true = np.array([names.index(CLASS["baby" if "baby" in c["path"] else Path(c["path"]).stem]) for c in clips])
labels = np.zeros_like(scores)
labels[np.arange(len(clips)), true] = 1
train = grounded.read_labelled(ROOT.parent / "shared" / "data" / "captions" / "audiocaps_train.csv")
sim = grounded.simulated(labels, train.labels, 0)


def describe(s: np.ndarray, what: str) -> None:
    t = s[np.arange(len(s)), true]
    other = s.copy()
    other[np.arange(len(s)), true] = 0
    rank = (s > t[:, None]).sum(1)
    print(f"{what:10s} labelled class: mean {t.mean():.2f}, median {np.median(t):.2f}, top-1 {np.mean(rank == 0):.2f}; "
          f"other classes > 0.1: {np.mean((other > 0.1).sum(1)):.1f}, > 0.3: {np.mean((other > 0.3).sum(1)):.1f}")


describe(scores, "YAMNet")
describe(sim, "simulated")
