"""Validation of the "confidence" of `audiocap caption` records: does it rank clips by quality?

For each set and each mode of `caption`, every clip's printed caption is scored against its
references (per-clip METEOR and CIDEr-D, pycocoevalcap 1.2), and each candidate confidence is
compared with those scores: Spearman's rho, and the mean score of the clips in each quartile of
the candidate (Q1: the least confident quarter). A useful figure has a clearly positive rho and
rising quartile means, on both sets.

Sets (as bench/quality/grounded_report.py runs them, whose functions this reuses):
  val    AudioCaps val, 495 clips x 5 human captions; input simulated from the clips' labels
  real   the labelled real clips of ../shared/data/sounds (the model's tagger on the real audio)
         against captions written from each label; also split into "real events" and "real
         scenes"
Modes: full (what `caption` prints by default: the decoder) and fast (`caption --fast`: the
retrieved pool's consensus caption).

Candidates, per window (the pool: the window's retrieved captions with their weights, one
exact copy of the printed caption left out):
  pool TF-IDF cosine (shipped)  pipeline.confidence.confidence, what `caption` writes: the
                         caption's mean TF-IDF cosine with the pool, n-grams weighted by the idf
                         of the index's captions
  ..., the pool's idf    the same with each pool's own idf (no corpus statistics)
  pool CIDEr-D / 10      the caption's expected CIDEr-D against the pool (the index's idf, as
                         the hypothesis choice uses), / 10
  pool F-mean            the caption's mean unigram F-mean (METEOR's) with the pool
  pool content-word F-mean  the same over content words only (agreement.is_content_word)
  top tag                the highest pooled class score (the first of the record's tags)
  CIDEr-D / 10 x top tag, F-mean x top tag  products of the above
  nearest set            cosine of the query to its nearest label set (label-space models)

Needs ../shared/data and Java (METEOR); exits with a message without them.

Usage: python bench/quality/confidence_report.py [-m MODEL] [--limit N] [--sets val,real]
       [--modes full,fast] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench" / "quality"))

from bootstrap_report import load_clips  # noqa: E402
from grounded_report import real_scores, systems, val_set  # noqa: E402
from sounds_dataset import kinds  # noqa: E402

from audiocap_cli.evaluation.metrics import score_batch  # noqa: E402
from audiocap_cli.pipeline.captioner import Captioner, CaptionOptions  # noqa: E402
from audiocap_cli.pipeline.confidence import confidence  # noqa: E402
from audiocap_cli.pipeline.registry import resolve  # noqa: E402
from audiocap_cli.retrieval.index import Hit  # noqa: E402
from audiocap_cli.retrieval.kinds import LabelSpace  # noqa: E402
from audiocap_cli.text.agreement import (  # noqa: E402
    MAX_NGRAM,
    ciderd_agreement,
    is_content_word,
    unigram_fmean,
    words,
)

SHIPPED = "pool TF-IDF cosine (shipped)"
METRICS = ("meteor", "cider_d")
# mode -> the `systems` row that is `caption`'s output in that mode
MODES = {"full": "generated", "fast": "consensus guidance"}


class Window:
    """What a candidate reads of one clip: its printed caption, the evidence pool, the
    retrieval's hits and the pooled class scores ``[C]``."""

    def __init__(
        self, caption: str, pool: tuple[list[str], list[float]], hits: list[Hit], scores: np.ndarray
    ) -> None:
        self.caption, self.pool, self.hits, self.scores = caption, pool, hits, scores


def leave_one_out(
    caption: str, pool: tuple[list[str], list[float]]
) -> tuple[list[str], list[float]]:
    """The pool without one exact copy of ``caption`` (as pipeline.confidence does)."""
    caps, w = list(pool[0]), list(pool[1])
    if caption in caps:
        i = caps.index(caption)
        del caps[i], w[i]
    return caps, w


def candidates(cap: Captioner) -> dict[str, Callable[[list[Window]], list[float]]]:
    """Each candidate: windows -> one figure per window."""
    idf = cap.index.ngram_idf()
    unseen = max(idf.values(), default=0.0)

    def each(f: Callable[[Window], float]) -> Callable[[list[Window]], list[float]]:
        return lambda xs: [f(x) for x in xs]

    def fmean(x: Window, content: bool) -> float:
        caps, w = leave_one_out(x.caption, x.pool)
        keep = is_content_word if content else (lambda t: True)
        said = [t for t in words(x.caption) if keep(t)]
        if not said or not caps or not sum(w):
            return 0.0
        refs = [[t for t in words(c) if keep(t)] for c in caps]
        return float(np.average(unigram_fmean([said], refs)[0], weights=w))

    def cider(x: Window) -> float:
        caps, w = leave_one_out(x.caption, x.pool)
        return float(ciderd_agreement([x.caption], caps, w, idf, unseen)[0]) / 10.0

    def top_tag(x: Window) -> float:
        return float(x.scores.max())

    def shipped(xs: list[Window]) -> list[float]:
        return confidence([x.caption for x in xs], [x.pool for x in xs], idf)

    out: dict[str, Callable[[list[Window]], list[float]]] = {
        SHIPPED: shipped,
        "pool TF-IDF cosine, the pool's idf": lambda xs: confidence(
            [x.caption for x in xs], [x.pool for x in xs], None
        ),
        "pool TF-IDF cosine, over the caption's orders": lambda xs: [
            min(1.0, c * MAX_NGRAM / max(1, min(MAX_NGRAM, len(words(x.caption)))))
            for c, x in zip(shipped(xs), xs)
        ],
        "pool CIDEr-D / 10": each(cider),
        "pool F-mean": each(lambda x: fmean(x, False)),
        "pool content-word F-mean": each(lambda x: fmean(x, True)),
        "top tag": each(top_tag),
        "CIDEr-D / 10 x top tag": each(lambda x: cider(x) * top_tag(x)),
        "F-mean x top tag": each(lambda x: fmean(x, False) * top_tag(x)),
    }
    if isinstance(cap.retrieval, LabelSpace):  # unit vectors: squared L2 distance d = 2 - 2 cos
        out["nearest set"] = each(lambda x: 1.0 - x.hits[0].distance / 2.0 if x.hits else 0.0)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def quartile_means(conf: np.ndarray, metric: np.ndarray) -> list[float]:
    """Mean ``metric`` of each quarter of the clips ranked by ``conf`` (least confident first;
    ties in clip order)."""
    order = np.argsort(conf, kind="stable")
    return [float(metric[q].mean()) for q in np.array_split(order, 4)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Writes nothing unless --json is given."
    )
    ap.add_argument(
        "-m", "--model", default=None, help="model directory or name (default: the shipped default)"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    ap.add_argument("--sets", default="val,real", help="val, real or both (comma-separated)")
    ap.add_argument("--modes", default="full,fast", help="full, fast or both (comma-separated)")
    ap.add_argument("--json", type=Path, default=None, help="write the table here too")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: development data not found; this report needs ../shared/data")
    if shutil.which("java") is None:
        sys.exit("no `java` on PATH: per-clip METEOR needs it")
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        sys.exit(f"unknown modes {sorted(unknown)}: full, fast")
    cap = Captioner(resolve(args.model), CaptionOptions(batch_size=64, fast=modes == ["fast"]))
    cands = candidates(cap)
    jobs: dict[str, tuple[dict[str, str], dict[str, list[str]]]] = {}
    confs: dict[str, dict[str, dict[str, float]]] = {}  # job -> candidate -> clip -> value
    timing: dict[str, float] = {}
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        if name == "val":
            ids, scores, refs = val_set(args.limit, encoder=cap.cfg.encoder)
        else:
            clips = load_clips(ROOT / "runs" / "sounds")[: args.limit or None]
            ids, refs = [c["id"] for c in clips], {c["id"]: c["captions"] for c in clips}
            scores = real_scores(cap, clips)
        rows, _ = systems(cap, scores, ablations=False)
        frames = np.zeros((len(scores), 1, 1), np.float32)
        hits = cap.retrieve(frames, scores[:, None, :])
        _, pools = cap.retrieval_of(hits)
        groups = (
            {name: ids}
            if name != "real"
            else {"real": ids, **{f"real {k}": v for k, v in kinds(ids).items()}}
        )
        at = {cid: j for j, cid in enumerate(ids)}
        for mode in modes:
            preds = rows[MODES[mode]]
            wins = [Window(p, pool, h, s) for p, pool, h, s in zip(preds, pools, hits, scores)]
            values = {c: f(wins) for c, f in cands.items()}
            for group, sub in groups.items():
                key = f"{group}\t{mode}"
                jobs[key] = ({i: preds[at[i]] for i in sub}, {i: refs[i] for i in sub})
                confs[key] = {c: {i: v[at[i]] for i in sub} for c, v in values.items()}
        timing[name] = time.perf_counter() - t0
    res = score_batch(jobs, metrics=METRICS)
    print(
        "| set | mode | candidate | rho METEOR | rho CIDEr-D | METEOR by quartile Q1..Q4 "
        "| CIDEr-D by quartile Q1..Q4 | candidate quartile bounds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for key, per_cand in confs.items():
        group, mode = key.split("\t")
        per_clip = res[key].per_clip
        ids = list(per_cand[SHIPPED])
        met = {m: np.array([per_clip[i][m] for i in ids]) for m in METRICS}
        for cand, vals in per_cand.items():
            conf = np.array([vals[i] for i in ids])
            rho = {m: spearman(conf, met[m]) for m in METRICS}
            qm = {m: quartile_means(conf, met[m]) for m in METRICS}
            bounds = np.quantile(conf, [0.25, 0.5, 0.75]).tolist()
            print(
                f"| {group} ({len(ids)}) | {mode} | {cand} "
                f"| {rho['meteor']:.3f} | {rho['cider_d']:.3f} | "
                + " / ".join(f"{100 * v:.1f}" for v in qm["meteor"])
                + " | "
                + " / ".join(f"{100 * v:.1f}" for v in qm["cider_d"])
                + " | "
                + " / ".join(f"{b:.3f}" for b in bounds)
                + " |"
            )
            table.append(
                {
                    "set": group,
                    "mode": mode,
                    "candidate": cand,
                    "clips": len(ids),
                    "rho": rho,
                    "quartile_means": qm,
                    "quartile_bounds": bounds,
                    "corpus": {m: res[key].corpus.get(m) for m in METRICS},
                }
            )
    print(f"\nseconds: {', '.join(f'{k} {v:.0f}' for k, v in timing.items())}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
