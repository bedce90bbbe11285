"""Tuning of labelspace.LabelSpaceConfig: consensus-caption METEOR / CIDEr-D of label-space
retrieval on AudioCaps val (input simulated from labels by labelsim, corpus AudioCaps train)
and on the 337 labelled real clips (the encoder's real scores, label-written references).
Needs ../shared/data; about 4 min.

Usage: python bench/fits/labelspace_grid.py [--encoder yamnet|efficientat] [--grid full|power]
  --grid power: the query power (1-4) and the corpus' caption-text labels (textlabels.py)
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument("--encoder", default="yamnet", choices=("yamnet", "efficientat"))
ap.add_argument("--grid", default="full", choices=("full", "power"))
args = ap.parse_args()
ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench" / "quality"))
if not SHARED.is_dir():
    sys.exit(f"{SHARED}: development data not found; this script needs ../shared/data")

from bootstrap_report import load_clips, tagger_scores  # noqa: E402

from audiocap_cli.evaluation import metrics
from audiocap_cli.retrieval import labelspace as ls  # noqa: E402
from audiocap_cli.text.agreement import ngram_idf  # noqa: E402
from audiocap_cli.training import grounded  # noqa: E402

ENC = args.encoder
TRAIN = SHARED / "captions" / "audiocaps_train.csv"
trl = grounded.read_labelled(TRAIN, encoder=ENC)
mined = grounded.read_labelled(TRAIN, encoder=ENC, text_labels=True)
val = grounded.read_labelled(SHARED / "captions" / "audiocaps_val.csv", encoder=ENC)
caps = trl.captions
clips = load_clips(ROOT / "runs" / "sounds")
real = np.stack([s.max(0) for s in tagger_scores(clips, ROOT / "runs" / "bootstrap", ENC)])
rrefs = {c["id"]: c["captions"] for c in clips}
vrefs = dict(zip(val.clip_ids, val.clip_captions()))
sim = grounded.simulated(val.clip_labels, trl.labels, grounded.VAL_SIM_SEED, ENC)
idf = ngram_idf(caps)
jobs = {}
h = grounded.hierarchy(encoder=ENC)
lab = trl.clip_labels > 0
has_anc = lab & h.ancestors.any(axis=1)[None, :]
named = has_anc & ((lab.astype(np.float32) @ h.ancestors.T.astype(np.float32)) > 0)
print(
    f"AudioCaps train labels that have an ancestor class and name one: {named.sum() / has_anc.sum():.1%}"
)


def run(name, cfg, corpus_labels=None):
    """Consensus caption of each query, as the captioner picks guidance[0]."""
    source = trl.labels if corpus_labels is None else corpus_labels
    corpus = ls.LabelCorpus.build(grounded.corpus_labels(source, cfg), caps, cfg)
    for tag, q, ids, refs in (
        ("val", sim, val.clip_ids, vrefs),
        ("real", real, [c["id"] for c in clips], rrefs),
    ):
        best = ls.corpus_guidance(corpus, q, cfg, 1, idf=idf if cfg.corpus_idf else None)
        jobs[f"{tag}/{name}"] = ({i: b[0] for i, b in zip(ids, best)}, refs)


P3 = 3.0  # the grid was run around power 3; the default's power 4 is in its last row


def C(**kw) -> ls.LabelSpaceConfig:
    base = grounded.label_space(ENC) if ENC in grounded.FITS else ls.LabelSpaceConfig()
    return dataclasses.replace(base, **({"score_power": P3} | kw))


if args.grid == "power":
    for power in (1.0, 2.0, 3.0, 4.0):
        run(f"pow{power:g}", C(score_power=power))
        run(f"pow{power:g} + caption-text labels", C(score_power=power), mined.labels)
    res = metrics.score_batch(jobs, metrics=("meteor", "cider_d"))
    for k, r in res.items():
        m, c = r.corpus["meteor"] * 100, r.corpus["cider_d"] * 100
        print(f"{k:65s} METEOR {m:.1f} CIDEr-D {c:.1f}", flush=True)
    sys.exit(0)


grid = {
    "old default: p50 pow.5, labels as given": C(
        rerank_pool=50, per_set=50, score_power=0.5, ancestors=False
    ),
    "p50 pow1, labels as given": C(rerank_pool=50, per_set=50, score_power=1.0, ancestors=False),
    "p200 pow1, labels as given": C(rerank_pool=200, per_set=200, score_power=1.0, ancestors=False),
    "p50 pow1": C(rerank_pool=50, per_set=50, score_power=1.0),
    "p50 pow2": C(rerank_pool=50, per_set=50, score_power=2.0),
    "p100 pow2": C(score_power=2.0),
    "p200 pow3": C(rerank_pool=200, per_set=200),
    "p100 pow3 (the decoder's training guidance)": C(),
    "p100 pow3 set_power 4": C(set_power=4.0),
    "p100 pow3 set_power 16": C(set_power=16.0),
    "p100 pow3 corpus idf": C(corpus_idf=True),
    "p100 pow3 idf class weights": C(idf_power=1.0),
    "p100 pow4 (default: captioning)": ls.LabelSpaceConfig(),
}
for n, cfg in grid.items():
    run(n, cfg)
res = metrics.score_batch(jobs, metrics=("meteor", "cider_d"))
for k, r in res.items():
    print(
        f"{k:65s} METEOR {r.corpus['meteor'] * 100:.1f} CIDEr-D {r.corpus['cider_d'] * 100:.1f}",
        flush=True,
    )
