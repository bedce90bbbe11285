"""Caption index: hnswlib recall@k and latency vs exact (numpy brute-force) search.

    .venv/bin/python bench/speed/bench_index.py [--n 50000] [--dim 2560] [--queries 200] [--k 5]
        [--data clustered|random] [--ef 16,32,64,128] [--M 32] [--efc 200] [--threads N]

Builds a CaptionIndex over n unit vectors of the retriever's dim (20 frames x 128 = 2560) and
prints build time, size on disk, then for each ef_search: recall@k against exact squared-L2
search, per-query latency (one query per call, one thread: what captioning one clip pays)
and batched latency per query, with the exact search's latencies as the baseline ratio.
Goal: recall@5 >= 0.99 at <= 1 ms per query at n = 50k.

``clustered`` (default) imitates trained embeddings: 1000 clusters in a 64-dim latent space
mapped linearly into 2560 dims plus small isotropic noise, L2-normalised. ``random``
(isotropic Gaussian) is the worst case for any graph index and is shown for reference only.
Queries are fresh draws from the same distribution (not indexed clips).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from audiocap_cli.retrieval.index import CaptionIndex, IndexConfig

LATENT = 64  # intrinsic dimension of the clustered data
CLUSTERS = 1000  # ~50 clips per "sound" at 50k, like AudioCaps' recurring events
ISO_NOISE = 0.02  # per-dim noise on top of the latent map (relative to unit-norm vectors)


def make_data(n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        base = np.random.default_rng(12345)  # same clusters / map for index and queries
        centres = base.standard_normal((CLUSTERS, LATENT), dtype=np.float32)
        w = (
            base.standard_normal((LATENT, dim), dtype=np.float32) / LATENT**0.5
        )  # a Python float keeps float32 (NEP 50)
        z = centres[rng.integers(0, CLUSTERS, n)] + 0.5 * rng.standard_normal(
            (n, LATENT), dtype=np.float32
        )
        x = z @ w
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += ISO_NOISE * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert x.dtype == np.float32
    return x


def exact_knn(data: np.ndarray, sq: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest by squared L2: ``[B, k]`` indices (||x||^2 - 2 q.x, in row blocks)."""
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), 64):
        d = sq[None, :] - 2.0 * (q[s : s + 64] @ data.T)
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[s : s + 64] = np.take_along_axis(part, order, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--data", choices=("clustered", "random"), default="clustered")
    ap.add_argument("--ef", default="16,24,32,64")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument(
        "--threads",
        type=int,
        default=-1,
        help="hnswlib build/batch threads (-1: all; the library builds with 1, for repeatable graphs)",
    )
    args = ap.parse_args()

    t = time.perf_counter()
    data = make_data(args.n, args.dim, args.data, seed=0)
    queries = make_data(args.queries, args.dim, args.data, seed=1)
    print(
        f"data: {args.n} x {args.dim} {args.data} float32 ({data.nbytes / 2**20:.0f} MiB), "
        f"{args.queries} queries, k={args.k}  [{time.perf_counter() - t:.1f} s to generate]"
    )

    ids = [f"clip{i}" for i in range(args.n)]
    caps = [("a caption",)] * args.n
    cfg = IndexConfig(
        dim=args.dim, embedder="bench", encoder="bench", M=args.M, ef_construction=args.efc
    )
    t = time.perf_counter()
    index = CaptionIndex.build(data, ids, caps, cfg, threads=args.threads)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        out = index.save(Path(tmp) / "idx")
        size = sum(p.stat().st_size for p in out.iterdir())
        t = time.perf_counter()
        CaptionIndex.load(out)
        load_s = time.perf_counter() - t
    print(
        f"build: {build_s:.1f} s (M={args.M}, ef_construction={args.efc}, {build_s / args.n * 1e3:.2f} ms/clip); "
        f"on disk: {size / 2**20:.0f} MiB ({size / args.n:.0f} B/clip); load: {load_s:.2f} s"
    )

    sq = (data * data).sum(1)
    t = time.perf_counter()
    truth = exact_knn(data, sq, queries, args.k)
    exact_batch = (time.perf_counter() - t) / args.queries
    n_single = min(args.queries, 20)
    t = time.perf_counter()
    for i in range(n_single):
        exact_knn(data, sq, queries[i : i + 1], args.k)
    exact_single = (time.perf_counter() - t) / n_single
    print(
        f"exact numpy: {exact_single * 1e3:.2f} ms/query single, {exact_batch * 1e3:.3f} ms/query batched"
    )

    graph = index._graph  # the bench pins thread counts; the library leaves hnswlib's default
    print(
        f"{'ef':>5} {'recall@k':>9} {'single ms':>10} {'batch ms':>9} {'x exact(single)':>16} {'x exact(batch)':>15}"
    )
    for ef in (int(e) for e in args.ef.split(",")):
        graph.set_ef(ef)
        graph.set_num_threads(args.threads if args.threads > 0 else graph.num_threads)
        t = time.perf_counter()
        labels, _ = graph.knn_query(queries, k=args.k)
        batch = (time.perf_counter() - t) / args.queries
        graph.set_num_threads(1)
        t = time.perf_counter()
        for i in range(args.queries):
            graph.knn_query(queries[i : i + 1], k=args.k)
        single = (time.perf_counter() - t) / args.queries
        recall = np.mean(
            [len(set(a) & set(b)) / args.k for a, b in zip(labels.tolist(), truth.tolist())]
        )
        print(
            f"{ef:>5} {recall:>9.4f} {single * 1e3:>10.3f} {batch * 1e3:>9.3f} "
            f"{exact_single / single:>15.1f}x {exact_batch / batch:>14.1f}x"
        )
    # The library's own query path (ef = IndexConfig.ef_search, Hit objects, exclude handling):
    graph.set_num_threads(1)
    t = time.perf_counter()
    for i in range(args.queries):
        index.query(queries[i : i + 1], k=args.k, exclude_ids=[ids[i]])
    print(
        f"CaptionIndex.query (ef_search={cfg.ef_search}, exclude-self, 1 thread): "
        f"{(time.perf_counter() - t) / args.queries * 1e3:.3f} ms/query"
    )


if __name__ == "__main__":
    main()
