"""Validation of a label-grounded model: AudioCaps val (simulated input) and the labelled real clips.

Rows, per set:
  top-1 retrieved         the first caption of the nearest label set
  consensus guidance      guidance[0]: the most typical caption of the retrieved pool
  generated               what `audiocap caption` prints (its defaults): the decoder's caption, or
                          the pool's own most typical caption where that agrees with the pool by
                          --pool-margin more (decoding.DecodingOptions.pool_margin)
  generated, decoder only the decoder's caption alone (--pool-margin inf); the ablations below
                          switch parts of it off
  generated, audio off    the decoder with its audio branch switched off (inference-time ablation)
  generated, guidance off the decoder with empty guidance
  generated, head frozen  the low-rank head update and bias zeroed: the pretrained LM head
Columns: BLEU-4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap 1.2), plus a distribution check
(mean words, distinct words, % of captions that copy a guidance caption, % that say a content
word twice) and, on the real clips, % that name the labelled source (one of its keywords as a
whole word, bootstrap_report.names_source): their references are short label templates ("A frog
croaks."), so METEOR there penalises longer AudioCaps-style captions that still name the source.
The real clips' retrieval and generated rows are repeated for each kind of clip, each kind scored
on its own ("real events": 137 sound events; "real scenes": 200 one-second urban scenes; see
sounds_dataset.kinds).

AudioCaps val: 495 clips x 5 human captions; the input is class scores simulated from each
clip's AudioSet labels (grounded.simulated, seed VAL_SIM_SEED + --val-draw), retrieval from the model's
index (AudioCaps train only). Real clips: ../shared/data/sounds (337 clips), the model's real tagger on the
real audio through the Captioner, against the 5 captions bench/quality/sounds_dataset.py writes from
each label. Needs ../shared/data; exits with a message without it.

Usage: python bench/quality/grounded_report.py [-m MODEL] [--limit N] [--sets val,real] [--json OUT] [--predictions DIR]
       [--select consensus|guidance|score] [--recall-weight W] [--pool-margin M|inf] [--repeat-penalty P] [--beam K] [--min-len N] [--no-ablations]
       [--score-power P] [--rerank-pool N] [--val-draw K]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench" / "quality"))

from bootstrap_report import load_clips, names_source  # noqa: E402
from sounds_dataset import kinds  # noqa: E402

from audiocap_cli.evaluation.metrics import score_batch  # noqa: E402
from audiocap_cli.generation.decoding import DecodingOptions, choose  # noqa: E402
from audiocap_cli.pipeline.captioner import Captioner, CaptionOptions  # noqa: E402
from audiocap_cli.pipeline.registry import resolve  # noqa: E402
from audiocap_cli.retrieval.kinds import LabelSpace  # noqa: E402
from audiocap_cli.text.agreement import is_content_word  # noqa: E402
from audiocap_cli.training import grounded  # noqa: E402

METRICS = ("bleu", "meteor", "rouge_l", "cider_d")
COLUMNS = (
    ("BLEU-4", "bleu_4"),
    ("METEOR", "meteor"),
    ("ROUGE-L", "rouge_l"),
    ("CIDEr-D", "cider_d"),
)
DECODER_ONLY = "generated, decoder only"  # --pool-margin inf: never the pool's own caption
KIND_ROWS = (
    "top-1 retrieved",
    "consensus guidance",
    "generated",
    DECODER_ONLY,
)  # repeated per kind of real clip
_WORD = re.compile(r"[a-z']+")
# (flag, DecodingOptions field, help): the options `caption` decodes with
DECODING_FLAGS = (
    ("--select", "select", "beam hypothesis printed: consensus, guidance or score"),
    (
        "--recall-weight",
        "recall_weight",
        "weight of the unigram F-mean in the hypothesis selection",
    ),
    (
        "--pool-margin",
        "pool_margin",
        "the pool's own most typical caption is printed when it beats the chosen hypothesis' "
        "agreement by this margin (inf: never)",
    ),
    (
        "--repeat-penalty",
        "repeat_penalty",
        "log-prob off a caption each time it says a content word again (0: off)",
    ),
    ("--beam", "beam_size", "beam width (1: greedy)"),
    ("--min-len", "min_len", "tokens before a caption may end"),
)


def systems(
    cap: Captioner, scores: np.ndarray, ablations: bool
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Every row's captions for clips with pooled class ``scores [N, C]``."""
    frames = np.zeros(
        (len(scores), 1, 1), np.float32
    )  # label retrieval and decoder read scores only
    sc = scores[:, None, :]
    hits = cap.retrieve(frames, sc)
    guid, ev = cap.retrieval_of(hits)
    out = {
        "top-1 retrieved": [row[0].captions[0] if row else "" for row in hits],
        "consensus guidance": [g[0] if g else "" for g in guid],
    }
    opts, dopts = cap.opts, cap.opts.decoding
    if cap.decoder is None or math.isinf(dopts.pool_margin) or dopts.select != "consensus":
        out["generated"] = cap.generate(guid, frames, sc, ev)  # what `caption` prints
        if cap.decoder is None:
            return out, guid
    else:
        # One decode serves both rows: the decoder's own choice, then the pool's caption against
        # it with the same choice that `caption` makes (each Decoded keeps the clip's beam).
        cap.opts = dataclasses.replace(
            opts, decoding=dataclasses.replace(dopts, pool_margin=math.inf)
        )
        own = cap.decode_windows(guid, frames, sc, ev)
        idf = cap.index.ngram_idf()
        out["generated"] = [
            d.text for d in choose(own, ev, dopts.recall_weight, idf, dopts.pool_margin)
        ]
        out[DECODER_ONLY] = [d.text for d in own]  # the ablations switch parts of it off
    try:
        if ablations:
            ablate(cap, guid, frames, sc, ev, out)
    finally:
        cap.opts = opts
    return out, guid


def ablate(
    cap: Captioner,
    guid: list[list[str]],
    frames: np.ndarray,
    sc: np.ndarray,
    ev: list[tuple[list[str], list[float]]],
    out: dict[str, list[str]],
) -> None:
    """The generated rows with a part of the decoder switched off at inference time."""
    dec = cap.decoder
    cfg = dec.cfg
    dec.cfg = dataclasses.replace(cfg, use_audio=False)
    out["generated, audio off"] = cap.generate(guid, frames, sc, ev)
    dec.cfg = cfg
    out["generated, guidance off"] = cap.generate(
        [[] for _ in guid], frames, sc, [([], []) for _ in guid]
    )
    if dec.vocab_ids is not None:
        b, bias = dec.head_b.detach().clone(), dec.head_bias.detach().clone()
        with torch.no_grad():
            dec.head_b.zero_()
            dec.head_bias.zero_()
        out["generated, head frozen"] = cap.generate(guid, frames, sc, ev)
        with torch.no_grad():
            dec.head_b.copy_(b)
            dec.head_bias.copy_(bias)


def distribution(
    preds: list[str], guid: list[list[str]], keywords: list[list[str]] | None = None
) -> dict[str, float]:
    """Length, vocabulary, copies and repeats of ``preds``; with ``keywords`` (per clip), the %
    naming the source."""
    words = [_WORD.findall(p.lower()) for p in preds]
    copies = sum(p.strip().lower() in {g.strip().lower() for g in gs} for p, gs in zip(preds, guid))
    return {
        "mean_words": float(np.mean([len(w) for w in words])),
        "distinct_words": len({x for w in words for x in w}),
        "copy_pct": 100.0 * copies / max(len(preds), 1),
        "repeat_pct": 100.0 * sum(map(repeats_a_word, words)) / max(len(preds), 1),
        "names_pct": None
        if keywords is None
        else 100.0 * float(names_source(preds, keywords).mean()),
    }


def repeats_a_word(words: list[str]) -> bool:
    """Whether a caption says a content word twice (the words `repeat_penalty` checks, exact)."""
    content = [w for w in words if is_content_word(w)]
    return len(set(content)) < len(content)


def val_set(
    limit: int | None, draw: int = 0, encoder: str = "yamnet"
) -> tuple[list[str], np.ndarray, dict[str, list[str]]]:
    """AudioCaps val: ids, class scores simulated as ``encoder`` would give them, references."""
    train = grounded.read_labelled(SHARED / "captions" / "audiocaps_train.csv", encoder=encoder)
    val = grounded.read_labelled(SHARED / "captions" / "audiocaps_val.csv", encoder=encoder)
    seed = grounded.VAL_SIM_SEED + draw
    scores = grounded.simulated(val.clip_labels, train.labels, seed, encoder)
    ids, refs = val.clip_ids, dict(zip(val.clip_ids, val.clip_captions()))
    n = limit or len(ids)
    return ids[:n], scores[:n], refs


def real_scores(cap: Captioner, clips: list[dict]) -> np.ndarray:
    """Pooled YAMNet scores ``[N, C]`` of each clip's first window, as `caption` computes them."""
    feats = cap.cache.get_many([c["path"] for c in clips], cap.encoder, cap.policy)
    return np.concatenate([cap.window_scores(f, 0) for f in feats])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "-m", "--model", default=None, help="model directory or name (default: the shipped default)"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    ap.add_argument("--sets", default="val,real")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the table here too")
    ap.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="write each generated caption with its clip's METEOR and CIDEr-D here (SET.jsonl), for paired comparisons",
    )
    # `caption`'s decoding options: each flag's default is the DecodingOptions field's
    for flag, field, help_ in DECODING_FLAGS:
        default = getattr(DecodingOptions, field)
        ap.add_argument(flag, dest=field, type=type(default), default=default, help=help_)
    ap.add_argument(
        "--score-power",
        type=float,
        default=None,
        help="query calibration power, changed at captioning time only (default: the model's labelspace.json)",
    )
    ap.add_argument(
        "--rerank-pool",
        type=int,
        default=None,
        help="captions gathered per query, changed at captioning time only (default: the model's)",
    )
    ap.add_argument(
        "--val-draw",
        type=int,
        default=0,
        help="another draw of val's simulated input: seed VAL_SIM_SEED + K (0: the one the README's table uses)",
    )
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: development data not found; this report needs ../shared/data")
    cap = Captioner(
        resolve(args.model),
        CaptionOptions(
            DecodingOptions(**{field: getattr(args, field) for _, field, _ in DECODING_FLAGS}),
            batch_size=64,
        ),
    )
    if not isinstance(cap.retrieval, LabelSpace):
        sys.exit("this report is for label-grounded models (retrieval 'labels')")
    labels = cap.retrieval.labels
    # query-side settings only: the index (label vectors, class weights) is the model's as built
    changes = {
        k: v
        for k, v in (
            ("score_power", args.score_power),
            ("rerank_pool", args.rerank_pool),
        )
        if v is not None
    }
    labels.cfg = dataclasses.replace(labels.cfg, **changes)
    jobs, dists, timing = {}, {}, {}
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        keywords = None
        if name == "val":
            ids, scores, refs = val_set(args.limit, args.val_draw, cap.cfg.encoder)
        else:
            clips = load_clips(ROOT / "runs" / "sounds")[: args.limit or None]
            ids, refs = [c["id"] for c in clips], {c["id"]: c["captions"] for c in clips}
            keywords = [c["keywords"] for c in clips]
            scores = real_scores(cap, clips)
        rows, guid = systems(cap, scores, not args.no_ablations)
        timing[name] = time.perf_counter() - t0
        for row, preds in rows.items():
            jobs[f"{name}\t{row}"] = (dict(zip(ids, preds)), {i: refs[i] for i in ids})
            dists[f"{name}\t{row}"] = distribution(preds, guid, keywords)
        ref_caps = [refs[i][0] for i in ids]
        dists[f"{name}\treferences (first of each clip)"] = distribution(
            ref_caps, [[] for _ in ids], keywords
        )
        if name == "real":
            at = {cid: j for j, cid in enumerate(ids)}
            for kind, sub in kinds(ids).items():
                rows_of = [at[i] for i in sub]
                kw = [keywords[j] for j in rows_of] if keywords is not None else None
                for row in (r for r in KIND_ROWS if r in rows):
                    preds = [rows[row][j] for j in rows_of]
                    jobs[f"real {kind}\t{row}"] = (dict(zip(sub, preds)), {i: refs[i] for i in sub})
                    dists[f"real {kind}\t{row}"] = distribution(
                        preds, [guid[j] for j in rows_of], kw
                    )
    res = score_batch(jobs, metrics=METRICS)
    print(
        "| set | system | "
        + " | ".join(c for c, _ in COLUMNS)
        + " | mean words | distinct words | % copies of guidance | % repeating a word | % naming the source |"
    )
    print("|---|---|" + "---|" * (len(COLUMNS) + 5))
    table = []
    for key, d in dists.items():
        s, row = key.split("\t")
        r = res.get(key)
        names = "" if d["names_pct"] is None else f"{d['names_pct']:.1f}"
        vals = [
            f"{100 * r.corpus[k]:.1f}" if r is not None and r.corpus.get(k) is not None else ""
            for _, k in COLUMNS
        ]
        print(
            f"| {s} | {row} | "
            + " | ".join(vals)
            + f" | {d['mean_words']:.1f} | {d['distinct_words']} | {d['copy_pct']:.0f} | {d['repeat_pct']:.1f} | {names} |"
        )
        table.append(
            {"set": s, "system": row, **({k: r.corpus[k] for _, k in COLUMNS} if r else {}), **d}
        )
    print(
        f"\nclips: {', '.join(f'{k} {len(v[0])}' for k, v in jobs.items() if k.endswith('generated'))}; "
        f"seconds: {', '.join(f'{k} {v:.0f}' for k, v in timing.items())}"
    )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    if args.predictions:
        sets = args.sets.split(",")
        write_predictions(
            args.predictions, {k: v for k, v in jobs.items() if k.split("\t")[0] in sets}, res
        )


def write_predictions(folder: Path, jobs: dict, res: dict) -> None:
    """One JSON line per clip of each set's generated captions, with its per-clip scores."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, (preds, _) in jobs.items():
        name, row = key.split("\t")
        if row != "generated":
            continue
        per_clip = res[key].per_clip
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for cid, caption in preds.items():
                f.write(json.dumps({"id": cid, "caption": caption, **per_clip.get(cid, {})}) + "\n")


if __name__ == "__main__":
    main()
