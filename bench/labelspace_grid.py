"""Tuning of labelspace.LabelSpaceConfig: consensus-caption METEOR / CIDEr-D of label-space
retrieval on AudioCaps val (input simulated from labels, corpus AudioCaps train) and on the 337
labelled real clips (real YAMNet scores, label-written references). Needs ../shared/data.

Usage: python bench/labelspace_grid.py
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench"))
if not SHARED.is_dir():
    sys.exit(f"{SHARED}: development data not found; this script needs ../shared/data")

from bootstrap_report import load_clips, yamnet_scores  # noqa: E402

from audiocap_cli import grounded, metrics  # noqa: E402
from audiocap_cli import labelspace as ls  # noqa: E402
from audiocap_cli.zeroshot import ngram_idf  # noqa: E402


trl = grounded.read_labelled(SHARED / "captions" / "audiocaps_train.csv")
val = grounded.read_labelled(SHARED / "captions" / "audiocaps_val.csv")
trL, caps = trl.labels, trl.captions
vaL = val.clip_labels
clips = load_clips(ROOT / "runs" / "sounds")
sc = yamnet_scores(clips, ROOT / "runs" / "bootstrap")
real = np.stack([s.max(0) for s in sc])
realmean = np.stack([s.mean(0) for s in sc])
rrefs = {c["id"]: c["captions"] for c in clips}
vrefs = dict(zip(val.clip_ids, val.clip_captions()))
sim = grounded.simulated(vaL, trL, grounded.VAL_SIM_SEED)
idf = ngram_idf(caps)
jobs = {}


def run(name, cfg, q, ids, refs):
    """Consensus caption of each query, as the captioner picks guidance[0]."""
    corpus = ls.LabelCorpus.build(trL, caps, cfg)
    best = ls.corpus_guidance(corpus, q, cfg, 1, idf=idf if cfg.corpus_idf else None)
    jobs[name] = ({i: b[0] for i, b in zip(ids, best)}, refs)


C = ls.LabelSpaceConfig
P1 = dict(score_power=1.0)
grid = {"p200": C(rerank_pool=200, per_set=200, **P1), "p50": C(**P1), "p50cidf": C(corpus_idf=True, **P1),
        "p100pow.5": C(rerank_pool=100, per_set=100), "p50pow.5 (default)": C(),
        "p200cidf": C(rerank_pool=200, per_set=200, corpus_idf=True, **P1), "p100cidf": C(rerank_pool=100, per_set=100, corpus_idf=True, **P1),
        "p50 idf-weights": C(idf_power=1.0, **P1), "p50pow2": C(score_power=2.0)}
for n, cfg in grid.items():
    run("val/" + n, cfg, sim, val.clip_ids, vrefs)
    run("real/" + n, cfg, real, [c["id"] for c in clips], rrefs)
run("real/p50pow.5 mean-pool", C(pool="mean"), realmean, [c["id"] for c in clips], rrefs)
res = metrics.score_batch(jobs, metrics=("meteor", "cider_d"))
for k, r in res.items():
    print(f"{k:28s} METEOR {r.corpus['meteor']*100:.1f} CIDEr-D {r.corpus['cider_d']*100:.1f}", flush=True)
