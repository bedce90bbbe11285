"""Tuning of labelspace.LabelSpaceConfig: consensus-caption METEOR / CIDEr-D of label-space
retrieval on AudioCaps val (input simulated from labels by labelsim, corpus AudioCaps train)
and on the 337 labelled real clips (real YAMNet scores, label-written references). Needs
../shared/data; about 4 min.

Usage: python bench/fits/labelspace_grid.py
"""

import argparse
import sys
from pathlib import Path

import numpy as np

argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
).parse_args()
ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench" / "quality"))
if not SHARED.is_dir():
    sys.exit(f"{SHARED}: development data not found; this script needs ../shared/data")

from bootstrap_report import load_clips, yamnet_scores  # noqa: E402

from audiocap_cli.evaluation import metrics
from audiocap_cli.retrieval import labelspace as ls  # noqa: E402
from audiocap_cli.text.agreement import ngram_idf  # noqa: E402
from audiocap_cli.training import grounded  # noqa: E402

trl = grounded.read_labelled(SHARED / "captions" / "audiocaps_train.csv")
val = grounded.read_labelled(SHARED / "captions" / "audiocaps_val.csv")
caps = trl.captions
clips = load_clips(ROOT / "runs" / "sounds")
real = np.stack([s.max(0) for s in yamnet_scores(clips, ROOT / "runs" / "bootstrap")])
rrefs = {c["id"]: c["captions"] for c in clips}
vrefs = dict(zip(val.clip_ids, val.clip_captions()))
sim = grounded.simulated(val.clip_labels, trl.labels, grounded.VAL_SIM_SEED)
idf = ngram_idf(caps)
jobs = {}
h = grounded.hierarchy()
lab = trl.clip_labels > 0
has_anc = lab & h.ancestors.any(axis=1)[None, :]
named = has_anc & ((lab.astype(np.float32) @ h.ancestors.T.astype(np.float32)) > 0)
print(
    f"AudioCaps train labels that have an ancestor class and name one: {named.sum() / has_anc.sum():.1%}"
)


def run(name, cfg):
    """Consensus caption of each query, as the captioner picks guidance[0]."""
    corpus = ls.LabelCorpus.build(grounded.corpus_labels(trl.labels, cfg), caps, cfg)
    for tag, q, ids, refs in (
        ("val", sim, val.clip_ids, vrefs),
        ("real", real, [c["id"] for c in clips], rrefs),
    ):
        best = ls.corpus_guidance(corpus, q, cfg, 1, idf=idf if cfg.corpus_idf else None)
        jobs[f"{tag}/{name}"] = ({i: b[0] for i, b in zip(ids, best)}, refs)


P3 = 3.0  # the grid was run around power 3; the default's power 4 is in its last row


def C(**kw) -> ls.LabelSpaceConfig:
    return ls.LabelSpaceConfig(**({"score_power": P3} | kw))


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
