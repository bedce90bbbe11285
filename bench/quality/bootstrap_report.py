"""Quality report of the text-only bootstrap: zero-shot caption retrieval through YAMNet's tags.

Training data: the AudioCaps training captions only (text; no paired audio). Evaluation: every
labelled real clip of ../shared/data/sounds (all splits; nothing is trained on them), with the
five captions bench/quality/sounds_dataset.py writes from each label as references.

Per variant of zeroshot.ZeroShotConfig it prints, over all clips:
  kw top1    share of clips whose top-1 retrieved caption names the labelled source
             (any keyword, word boundary, case-insensitive)
  kw rerank  the same after consensus re-ranking of the top ``rerank_pool`` captions
  CIDEr-D    of top-1 and of the re-ranked caption against the 5 label-written captions
and the floor (a seeded random corpus caption) and, with --predictions FILE (JSONL of
{"path", "caption"}), a generated caption per clip.

Caches (under --work, default runs/bootstrap): YAMNet clip scores and the corpus sentence
embeddings, so a rerun takes seconds.

Usage: python bench/quality/bootstrap_report.py [--work DIR] [--grid] [--per-source] [--predictions F]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench" / "quality"))

from audiocap_cli.retrieval import zeroshot as zs  # noqa: E402
from audiocap_cli.text import agreement  # noqa: E402
from audiocap_cli.text.embed import encode_cached  # noqa: E402

# The variants compared by default: the chosen default and one of each family.
BASE = zs.ZeroShotConfig()
DEFAULT = "B sentence top-5 (default)"
VARIANTS: dict[str, zs.ZeroShotConfig] = {
    "A profile T=0.02": replace(BASE, variant="profile"),
    DEFAULT: BASE,
    "C hybrid alpha=0.5": replace(BASE, variant="hybrid"),
}
RANDOM = "c random corpus caption"


def grid() -> dict[str, zs.ZeroShotConfig]:
    """The wider sweep behind the default choice (--grid)."""
    out: dict[str, zs.ZeroShotConfig] = dict(VARIANTS)
    for t in (0.01, 0.02, 0.05, 0.1):
        for pp in (0.0, 0.5):
            out[f"A T={t} prior^{pp}"] = replace(
                BASE, variant="profile", temperature=t, prior_power=pp
            )
    out["C hybrid alpha=0.25"] = replace(BASE, variant="hybrid", alpha=0.25)
    out["A keep generic"] = replace(BASE, variant="profile", drop_generic=False)
    out["A max-pool"] = replace(BASE, variant="profile", pool="max")
    out["A 'the sound of'"] = replace(BASE, variant="profile", class_template="the sound of {name}")
    for k in (1, 3, 5, 10, 0):
        for sp in (1.0, 2.0):
            out[f"B top{k} pow{sp}"] = replace(BASE, variant="sentence", top_k=k, score_power=sp)
    out["B 'the sound of'"] = replace(
        BASE, variant="sentence", class_template="the sound of {name}"
    )
    out["B keep generic"] = replace(BASE, variant="sentence", drop_generic=False)
    for pool in (50, 150, 300):
        out[f"B pool={pool}"] = replace(BASE, rerank_pool=pool)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_clips(sounds: Path) -> list[dict]:
    """All splits of the labelled dataset (written by sounds_dataset.py if absent)."""
    if not all((sounds / f"{s}.jsonl").is_file() for s in ("train", "val", "test")):
        import sounds_dataset

        sounds_dataset.write_dataset(sounds)
    clips = []
    for split in ("train", "val", "test"):
        for line in (sounds / f"{split}.jsonl").read_text().splitlines():
            if line.strip():
                clips.append(json.loads(line))
    return clips


def yamnet_scores(clips: list[dict], work: Path) -> list[np.ndarray]:
    """Per clip ``[T, 521]`` YAMNet scores of the whole file (see :func:`tagger_scores`)."""
    return tagger_scores(clips, work, "yamnet")


def tagger_scores(clips: list[dict], work: Path, encoder: str = "yamnet") -> list[np.ndarray]:
    """Per clip ``[T, C]`` class scores of the whole file through ``encoder``, cached in
    ``work/{encoder}_scores.npz`` (delete it after changing the encoder: a complete cache is
    used without loading it)."""
    path = work / f"{encoder}_scores.npz"
    cached = dict(np.load(path)) if path.is_file() else {}
    missing = [c for c in clips if c["id"] not in cached]
    if missing:
        import torch

        from audiocap_cli.audio import io as audio
        from audiocap_cli.audio.encoders import load_encoder

        enc = load_encoder(encoder)
        for c in missing:
            wave = torch.from_numpy(audio.load(c["path"], enc.sample_rate))[None]
            kw = {"lengths": [wave.shape[1]]} if getattr(enc, "takes_lengths", False) else {}
            with torch.inference_mode():
                cached[c["id"]] = enc.encode(wave, **kw).scores[0].numpy().astype(np.float32)
        work.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **cached)
    return [cached[c["id"]] for c in clips]


def names_source(captions: list[str], keywords: list[list[str]]) -> np.ndarray:
    """bool [N]: caption i contains one of keywords[i] as a whole word."""
    out = np.zeros(len(captions), dtype=bool)
    for i, (cap, kws) in enumerate(zip(captions, keywords)):
        pattern = r"\b(" + "|".join(re.escape(k) for k in kws) + r")\b"
        out[i] = re.search(pattern, cap, flags=re.IGNORECASE) is not None
    return out


def cider_d(systems: dict[str, list[str]], clips: list[dict]) -> dict[str, float]:
    """Corpus CIDEr-D of each system against the label-written captions (metrics module)."""
    refs = {c["id"]: c["captions"] for c in clips}
    try:
        from audiocap_cli.evaluation.metrics import score_batch

        jobs = {
            name: ({c["id"]: p for c, p in zip(clips, preds)}, refs)
            for name, preds in systems.items()
        }
        res = score_batch(jobs, metrics=("cider_d",))
        return {name: float(r.corpus["cider_d"]) for name, r in res.items()}
    except ImportError:  # metrics module missing: pycocoevalcap on simply tokenised text
        from pycocoevalcap.cider.cider import Cider

        tok = lambda s: " ".join(re.findall(r"[a-z0-9']+", s.lower()))  # noqa: E731
        r = {c["id"]: [tok(x) for x in c["captions"]] for c in clips}
        return {
            name: float(
                Cider().compute_score(r, {c["id"]: [tok(p)] for c, p in zip(clips, preds)})[0]
            )
            for name, preds in systems.items()
        }


def index_check(cap: np.ndarray, aud: np.ndarray, exact: np.ndarray, work: Path) -> str:
    """Build the persistent hnswlib index of the default variant; its size, time and recall."""
    import tempfile

    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=cap.shape[1])  # unit vectors: L2 ranks as cosine
    index.init_index(max_elements=len(cap), ef_construction=200, M=16, random_seed=0)
    index.set_num_threads(1)
    index.add_items(cap, np.arange(len(cap)))
    build = time.perf_counter() - t
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        index.save_index(f"{tmp}/index.bin")
        size = Path(f"{tmp}/index.bin").stat().st_size
    k = exact.shape[1]
    index.set_ef(max(2 * k, 200))
    labels, _ = index.knn_query(aud, k=k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(labels, exact)])
    top1 = np.mean(labels[:, 0] == exact[:, 0])
    return (
        f"hnswlib index of {len(cap)} x {cap.shape[1]} float32: {size / 2**20:.1f} MiB, "
        f"built in {build:.1f}s (1 thread); recall@{k} vs exact {recall:.3f}, top-1 agreement {top1:.3f}"
    )


def read_predictions(path: Path, clips: list[dict]) -> list[str]:
    by_path: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_path[str(Path(row["path"]).resolve())] = row["caption"]
            by_name[Path(row["path"]).name] = row["caption"]
    out = []
    for c in clips:
        cap = by_path.get(str(Path(c["path"]).resolve()), by_name.get(Path(c["path"]).name))
        out.append(cap if cap is not None else "")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bootstrap")
    ap.add_argument("--sounds", type=Path, default=None, help="dir of sounds_dataset.py jsonl")
    ap.add_argument("--captions", type=Path, default=SHARED / "captions" / "audiocaps_train.csv")
    ap.add_argument("--predictions", type=Path, default=None, help="JSONL of {path, caption}")
    ap.add_argument("--grid", action="store_true", help="sweep many variants")
    ap.add_argument("--per-source", action="store_true", help="keyword share per source")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.captions.is_file() or not (SHARED / "sounds").is_dir():
        raise SystemExit(
            f"needs {args.captions} and {SHARED / 'sounds'} (../shared/data): not found"
        )
    t0 = time.perf_counter()
    work: Path = args.work
    clips = load_clips(args.sounds or work / "sounds")
    scores = yamnet_scores(clips, work)
    t_scores = time.perf_counter() - t0

    with open(args.captions, newline="", encoding="utf-8") as f:
        corpus = [r["caption"] for r in csv.DictReader(f)]
    texts, counts, _ = zs.dedupe_captions(corpus)
    t1 = time.perf_counter()
    sent = encode_cached(zs._encoder(BASE.text_model), texts, root=work / "text_vectors")
    t_embed = time.perf_counter() - t1
    print(
        f"{len(clips)} clips; corpus {len(corpus)} captions, {len(texts)} after dedupe; "
        f"YAMNet scores {t_scores:.1f}s, caption embeddings {t_embed:.1f}s (cached after the first run)",
        file=sys.stderr,
    )

    keywords = [c["keywords"] for c in clips]
    rng = np.random.default_rng(args.seed)
    systems: dict[str, list[str]] = {
        RANDOM: [corpus[i] for i in rng.integers(0, len(corpus), len(clips))]
    }
    if args.predictions:
        systems["b generated (--predictions)"] = read_predictions(args.predictions, clips)
    variants = grid() if args.grid else VARIANTS
    prior_cache: dict[tuple, np.ndarray] = {}
    t2 = time.perf_counter()
    for name, cfg in variants.items():
        cap = zs.caption_vectors_from_embeddings(sent, cfg)  # [U, E]
        prior = None
        if cfg.prior_power > 0:
            key = (cfg.temperature, cfg.class_template, cfg.drop_generic)
            if key not in prior_cache:
                prior_cache[key] = zs.class_prior(zs.caption_profiles(sent, cfg))
            prior = prior_cache[key]
        aud = np.stack([zs.audio_vectors(s[None], cfg, prior)[0] for s in scores])  # [N, E]
        sims = aud @ cap.T  # [N, U]: unit vectors, so this ranks as the index's L2 does
        k = max(cfg.rerank_pool, 1)
        pool = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        pool = np.take_along_axis(pool, np.argsort(-np.take_along_axis(sims, pool, 1), axis=1), 1)
        systems[f"{name} | a top-1"] = [texts[p[0]] for p in pool]
        reranked = agreement.consensus_rerank([[texts[i] for i in p] for p in pool], top=1)
        systems[f"{name} | a' rerank"] = [r[0] for r in reranked]
        if name == DEFAULT:
            idf = agreement.ngram_idf(texts)
            reranked = agreement.consensus_rerank(
                [[texts[i] for i in p] for p in pool], top=1, idf=idf
            )
            systems[f"{name} | a' rerank, corpus idf"] = [r[0] for r in reranked]
            index_line = index_check(cap, aud, pool, work)
    t_retrieve = time.perf_counter() - t2

    cider = cider_d(systems, clips)
    print(f"\n{'system':<52} {'kw share':>9} {'CIDEr-D':>8}")
    for name, preds in systems.items():
        hit = names_source(preds, keywords)
        print(f"{name:<52} {hit.mean():>9.3f} {cider[name]:>8.3f}")
    best = f"{DEFAULT} | a' rerank"
    floor = names_source(systems[RANDOM], keywords).mean()
    ratio_kw = names_source(systems[best], keywords).mean() / max(floor, 1e-9)
    ratio_cider = cider[best] / max(cider[RANDOM], 1e-9)
    print(
        f"\ndefault (re-ranked) vs random corpus caption: keyword share x{ratio_kw:.1f}, CIDEr-D x{ratio_cider:.1f}"
    )
    if args.per_source:
        sources = sorted({c["source"] for c in clips})
        src = np.array([c["source"] for c in clips])
        hit = names_source(systems[f"{DEFAULT} | a' rerank"], keywords)
        print(f"\n{'source (default, rerank)':<24} {'n':>4} {'kw share':>9}")
        for s in sources:
            m = src == s
            print(f"{s:<24} {m.sum():>4} {hit[m].mean():>9.3f}")
        for c, p in list(zip(clips, systems[f"{DEFAULT} | a' rerank"]))[::25]:
            print(f"  {c['label']:<16} -> {p}")
    print(index_line)
    print(
        f"\nretrieval+rerank {t_retrieve:.1f}s for {len(variants)} variants; "
        f"wall {time.perf_counter() - t0:.1f}s; peak RSS {peak_rss_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
