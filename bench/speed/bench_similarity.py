"""Benchmark of all-pairs caption similarity labels (paper step 1) on AudioCaps train.

Prints wall time, the all-pairs rate it amounts to, agreement of the labels with exact
labels (random pairs; and every pair of random anchors against ALL captions = recall of
truly similar pairs), the bert-score package's own rate on a sample of pairs with the value
agreement, and peak RSS. ``--limit N`` uses the first N captions.

    python bench/speed/bench_similarity.py --limit 5000
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audiocap_cli.text import bertscore as B
from audiocap_cli.text import similarity as S

DEFAULT_CSV = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "captions"
    / "audiocaps_train.csv"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--limit", type=int, default=None, help="use the first N captions")
    ap.add_argument(
        "--random-pairs", type=int, default=200_000, help="random pairs for label agreement"
    )
    ap.add_argument(
        "--anchors", type=int, default=100, help="anchors scored exactly against all captions"
    )
    ap.add_argument(
        "--bert-score-pairs", type=int, default=2000, help="pairs run through bert_score (0: skip)"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.csv.is_file():
        print(f"skipped: {args.csv} not found (the AudioCaps captions live in ../shared/data)")
        return 0
    with open(args.csv, newline="", encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    if args.limit:
        captions = captions[: args.limit]
    n = len(captions)
    n_pairs = n * (n - 1) // 2
    cfg = S.SimilarityConfig()
    print(f"captions: {n} ({len(set(captions))} distinct), unordered pairs: {n_pairs:,}")

    t0 = time.perf_counter()
    done = [0]

    def report(step: int) -> None:  # stage timings on stderr, so a cut-off run still informs
        done[0] += step
        print(
            f"  [{time.perf_counter() - t0:7.1f} s] {done[0]:3d}% (embedding done before 1%; "
            f"5% calibration, 30% candidates, 100% exact scoring)",
            file=sys.stderr,
            flush=True,
        )

    labels, prep = S._labels_and_embedding(captions, cfg, report)
    wall = time.perf_counter() - t0
    assert prep is not None
    st = labels.stats
    print(f"labels: {wall:.1f} s wall = {n_pairs / wall:,.0f} pairs/s equivalent")
    print(
        f"  raw min {labels.raw_min:.6f} (sample min {st.get('sample_min', float('nan')):.6f}), "
        f"raw max {labels.raw_max:.6f}, raw threshold {labels.raw_threshold:.6f}"
    )
    print(
        f"  candidate cosine {st['candidate_cos']:.4f} -> {int(st['candidate_pairs']):,} candidate "
        f"pairs ({st['candidate_pairs'] / max(1, st['unique_captions'] ** 2 / 2):.4%} of distinct pairs); "
        f"similar caption pairs {int(st['similar_pairs']):,}"
    )
    # F1 >= 0 always (token maxima clamped at 0), so raw_min == 0 is exact; otherwise the
    # true minimum lies in [0, raw_min] and the threshold could drop by threshold' * raw_min
    drift = (1 - cfg.threshold) * labels.raw_min
    print(
        f"  global-min uncertainty: true min in [0, {labels.raw_min:.6f}] -> raw threshold could move by <= {drift:.6f}"
    )

    emb = prep.emb
    inv = torch.tensor([prep.index[c] for c in captions])
    rng = np.random.default_rng(args.seed)

    def labelled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether caption pairs (a, b) are in the label graph."""
        out = np.zeros(len(a), dtype=bool)
        for k, (i, j) in enumerate(zip(a, b)):
            nb = labels.indices[labels.indptr[i] : labels.indptr[i + 1]]
            out[k] = (
                len(nb) > 0 and np.searchsorted(nb, j) < len(nb) and nb[np.searchsorted(nb, j)] == j
            )
        return out

    # 1. random pairs
    a = rng.integers(0, n, args.random_pairs)
    b = rng.integers(0, n, args.random_pairs)
    ok = a != b
    a, b = a[ok], b[ok]
    t1 = time.perf_counter()
    f = B.greedy_f1(emb, inv[a], inv[b]).numpy()
    t_sparse = time.perf_counter() - t1
    exact = f > labels.raw_threshold
    got = labelled(a, b)
    print(
        f"random pairs: {len(a):,}, exactly similar {exact.sum()}, agreement {np.mean(exact == got):.6f}, "
        f"recall {got[exact].mean() if exact.any() else float('nan'):.4f} "
        f"(exact sparse scoring {len(a) / t_sparse:,.0f} pairs/s)"
    )

    # 2. anchors against ALL captions (dense kernel): recall of truly similar pairs
    anchors = rng.choice(n, min(args.anchors, n), replace=False)
    t1 = time.perf_counter()
    full = B.dense_f1(emb, inv[anchors], emb, inv)
    t_dense = time.perf_counter() - t1
    assert full is not None
    full[torch.arange(len(anchors)), torch.from_numpy(anchors)] = -1.0  # not itself
    fa = full.numpy()
    rows, cols = np.nonzero(fa > labels.raw_threshold)
    hit = labelled(anchors[rows], cols)
    near = np.abs(fa - labels.raw_threshold) < 0.05
    nr, nc = np.nonzero(near)
    near_agree = (
        np.mean((fa[nr, nc] > labels.raw_threshold) == labelled(anchors[nr], nc))
        if len(nr)
        else float("nan")
    )
    print(
        f"anchors x all: {len(anchors)} x {n} pairs, exactly similar {len(rows)}, recall "
        f"{hit.mean() if len(rows) else float('nan'):.5f}; pairs within +-0.05 of the threshold: "
        f"{len(nr)}, agreement {near_agree:.5f} (dense exact {fa.size / t_dense:,.0f} pairs/s)"
    )

    # 3. the bert-score package on a sample of pairs
    if args.bert_score_pairs > 0:
        import bert_score

        a = rng.integers(0, n, args.bert_score_pairs)
        b = rng.integers(0, n, args.bert_score_pairs)
        cands = [captions[i] for i in a]
        refs = [captions[i] for i in b]
        model_dir = B._resolve_model(cfg.model)
        t1 = time.perf_counter()
        _, _, bf = bert_score.score(
            cands, refs, model_type=model_dir, num_layers=cfg.num_layers, idf=cfg.idf
        )
        t_bs = time.perf_counter() - t1
        ours = B.greedy_f1(emb, inv[a], inv[b]).numpy()
        rate_bs = len(a) / t_bs
        print(
            f"bert-score: {len(a)} pairs in {t_bs:.1f} s = {rate_bs:,.0f} pairs/s; max |ours - bert_score| "
            f"{np.abs(ours - bf.numpy()).max():.2e}"
        )
        print(
            f"all pairs with bert-score would take {n_pairs / rate_bs / 3600:,.1f} h; "
            f"speed ratio ours/bert-score = {n_pairs / wall / rate_bs:,.0f}x"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
