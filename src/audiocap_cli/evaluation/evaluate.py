"""The evaluation scopes of Koizumi et al. 2020 (Table 1) over precomputed predictions.

Rows of the paper's table, grouped as in the paper:

* (i) the full system: ``"Ours"`` (retrieval-guided decoder);
* (ii) retrieval-only captioning, each the caption of the top-1 retrieved training clip:
  ``"1NN-<encoder>"`` (e.g. ``1NN-VGGish`` in the paper; raw mean-pooled encoder features,
  exact cosine 1NN, :func:`nearest_captions`), ``"Triplet-Retrieval"`` (the trained retriever's
  index) and the oracle ``"Top1-BERTScore"`` (the training caption with the highest BERTScore
  against the clip's own references, ``bertscore.top_bertscore`` with k=1);
* (iii) oracles: ``"Ours (GT)"`` (the decoder guided by the top-K BERTScore captions instead of
  retrieved ones) and ``"Human"`` (leave-one-out over the references, :func:`human_scores`).

This module never runs a model: the caller (the CLI) turns a trained model or index into
predictions (clip id -> caption) per scope, or passes a callable producing them, and
:func:`evaluate_scopes` scores every scope and the human rounds with one tokenizer, one METEOR
and one SPICE JVM. **No leakage**: a clip's own captions never serve as its guidance or its
retrieval result. The helpers here exclude by owner clip id (``key_ids``; the oracles pass
``exclude`` to ``bertscore.top_bertscore``);
retrieval through ``index.CaptionIndex.query`` must pass ``exclude_ids``; and
:func:`assert_no_leakage` checks any guidance a caller built itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import atomic_write_text, save_config
from ..errors import MetricsError
from ..vectors import l2_normalize
from .metrics import DEFAULT_METRICS, MetricsResult, metric_keys, score_batch

# Row names (Table 1). The paper's retrieval baseline used VGGish features: "1NN-VGGish".
OURS = "Ours"
TRIPLET_RETRIEVAL = "Triplet-Retrieval"
TOP1_BERTSCORE = "Top1-BERTScore"
OURS_GT = "Ours (GT)"
HUMAN = "Human"
GROUPS: tuple[str, ...] = ("system", "retrieval", "oracle")


def nn_name(encoder: str) -> str:
    """Row name of the raw-feature 1NN baseline for an encoder ("yamnet" -> "1NN-yamnet")."""
    return f"1NN-{encoder}"


#: The paper's columns, in its order, as (header, MetricsResult key); BERTScore is our extra.
PAPER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("BLEU-1", "bleu_1"),
    ("BLEU-2", "bleu_2"),
    ("BLEU-3", "bleu_3"),
    ("BLEU-4", "bleu_4"),
    ("METEOR", "meteor"),
    ("CIDEr-D", "cider_d"),
    ("ROUGE-L", "rouge_l"),
    ("SPICE", "spice"),
    ("SPIDEr", "spider"),
)
BERTSCORE_COLUMN: tuple[str, str] = ("BERTScore", "bertscore")


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation scored; saved beside its results."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    human: bool = True  # add the leave-one-out "Human" row
    min_references: int = 2  # Human needs >= 2 references per clip (1 candidate + 1 reference)


Predictor = Callable[[Sequence[str]], Mapping[str, str]]


@dataclass(frozen=True)
class Scope:
    """One row: a name, its group (system / retrieval / oracle) and its predictions, given as
    clip id -> caption or as a callable taking the test clip ids."""

    name: str
    predictions: Mapping[str, str] | Predictor
    group: str = "system"

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise MetricsError(f"scope {self.name!r}: group must be one of {', '.join(GROUPS)}")

    def resolve(self, clip_ids: Sequence[str]) -> dict[str, str]:
        preds = self.predictions(clip_ids) if callable(self.predictions) else self.predictions
        out = {cid: preds[cid] for cid in clip_ids if cid in preds}
        missing = [cid for cid in clip_ids if cid not in preds]
        if missing:
            raise MetricsError(
                f"{self.name}: no prediction for {len(missing)} of {len(clip_ids)} test clips "
                f"(e.g. {', '.join(missing[:3])})"
            )
        return out


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def human_rounds(
    references: Mapping[str, Sequence[str]], min_references: int = 2
) -> list[tuple[dict[str, str], dict[str, list[str]]]]:
    """Leave-one-out rounds: round j takes each clip's j-th reference as the candidate and the
    others as references. Rounds = the smallest reference count (5 for AudioCaps and Clotho)."""
    if not references:
        raise MetricsError("no reference captions to score")
    counts = [len(refs) for refs in references.values()]
    n_rounds = min(counts)
    if n_rounds < max(2, min_references):
        short = [cid for cid, refs in references.items() if len(refs) < max(2, min_references)]
        raise MetricsError(
            f"the Human row needs >= {max(2, min_references)} references per clip; "
            f"{len(short)} clip(s) have fewer (e.g. {', '.join(short[:3])})"
        )
    rounds = []
    for j in range(n_rounds):
        cand = {cid: refs[j] for cid, refs in references.items()}
        rest = {cid: [r for i, r in enumerate(refs) if i != j] for cid, refs in references.items()}
        rounds.append((cand, rest))
    return rounds


def average_rounds(rounds: Sequence[MetricsResult]) -> MetricsResult:
    """Mean of corpus scores over rounds (each round scored as its own corpus, so CIDEr-D's
    document frequencies come from that round's references), and of per-clip scores."""
    first = rounds[0]
    corpus: dict[str, float | None] = {}
    for key in first.corpus:
        values = [r.corpus.get(key) for r in rounds]
        corpus[key] = None if any(v is None for v in values) else float(np.mean(values))
    per_clip = {
        cid: {k: float(np.mean([r.per_clip[cid][k] for r in rounds])) for k in scores}
        for cid, scores in first.per_clip.items()
    }
    return MetricsResult(
        corpus=corpus, per_clip=per_clip, unavailable=dict(first.unavailable), n=first.n
    )


def human_scores(
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    spice_dir: str | Path | None = None,
    java: str = "java",
    bertscore_cfg: Any = None,
    min_references: int = 2,
) -> MetricsResult:
    """The "Human" row: each reference scored against the other ones, corpus-level per
    leave-one-out round, then averaged over the rounds (as in the DCASE / AudioCaps reports)."""
    rounds = human_rounds(references, min_references)
    jobs = {f"{HUMAN}#{j}": r for j, r in enumerate(rounds)}
    scored = score_batch(
        jobs, metrics=metrics, spice_dir=spice_dir, java=java, bertscore_cfg=bertscore_cfg
    )
    return average_rounds([scored[name] for name in jobs])


def evaluate_scopes(
    scopes: Sequence[Scope] | Mapping[str, Mapping[str, str]],
    references: Mapping[str, Sequence[str]],
    cfg: EvalConfig = EvalConfig(),
    spice_dir: str | Path | None = None,
    java: str = "java",
    bertscore_cfg: Any = None,
) -> dict[str, MetricsResult]:
    """Score every scope on the same test clips (each must cover all of them) plus, with
    ``cfg.human``, the Human row; rows come back in the order given, Human last."""
    if isinstance(scopes, Mapping):
        scopes = [Scope(name, preds) for name, preds in scopes.items()]
    clip_ids = list(references)
    if not clip_ids:
        raise MetricsError("no test clips to evaluate")
    names = [s.name for s in scopes]
    if len(set(names)) != len(names) or (cfg.human and HUMAN in names):
        raise MetricsError(
            f"scope names must be unique (and not {HUMAN!r} when the Human row is on)"
        )
    jobs: dict[str, tuple[Mapping[str, str], Mapping[str, Sequence[str]]]] = {}
    for s in scopes:
        extra = (
            set(s.predictions) - set(references) if isinstance(s.predictions, Mapping) else set()
        )
        if extra:
            raise MetricsError(
                f"{s.name}: {len(extra)} prediction(s) for clips outside the test set"
            )
        jobs[s.name] = (s.resolve(clip_ids), references)
    human_jobs: list[str] = []
    if cfg.human:
        for j, r in enumerate(human_rounds(references, cfg.min_references)):
            human_jobs.append(f"\0{HUMAN}#{j}")  # a name no scope can take
            jobs[human_jobs[-1]] = r
    scored = score_batch(
        jobs, metrics=cfg.metrics, spice_dir=spice_dir, java=java, bertscore_cfg=bertscore_cfg
    )
    out = {s.name: scored[s.name] for s in scopes}
    if human_jobs:
        out[HUMAN] = average_rounds([scored[n] for n in human_jobs])
    return out


# ----------------------------------------------------------------------------------------------
# Retrieval-only rows and oracles (pure numpy; models and indexes stay with the caller)
# ----------------------------------------------------------------------------------------------


def assert_no_leakage(owners: Mapping[str, Sequence[str]]) -> None:
    """``owners``: clip id -> owner clip ids of its guidance captions. Raise if a clip is
    guided by (or retrieves) one of its own captions."""
    leaks = [cid for cid, own in owners.items() if cid in set(own)]
    if leaks:
        raise MetricsError(
            f"{len(leaks)} clip(s) are guided by their own captions (e.g. {', '.join(leaks[:3])}); "
            "query the index with exclude_ids"
        )


def nearest_captions(
    queries: np.ndarray,
    query_ids: Sequence[str],
    keys: np.ndarray,
    key_ids: Sequence[str],
    key_captions: Sequence[Sequence[str]],
    k: int = 1,
    chunk: int = 1024,
) -> dict[str, list[str]]:
    """Exact cosine nearest neighbours (the "1NN-<encoder>" row on raw mean-pooled features).

    queries [Q, D], keys [N, D]; ``key_captions[i]`` are the captions of key clip ``key_ids[i]``.
    Returns query id -> the first ``k`` captions met walking its neighbour clips nearest first
    (k=1: the first caption of the nearest clip). A key clip with the query's id is skipped.
    """
    q = l2_normalize(queries)
    x = l2_normalize(keys)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise MetricsError(f"feature shapes do not match: queries {q.shape}, keys {x.shape}")
    if len(query_ids) != len(q) or len(key_ids) != len(x) or len(key_captions) != len(x):
        raise MetricsError("ids / captions do not match the number of feature rows")
    key_pos = {cid: i for i, cid in enumerate(key_ids)}
    # Enough neighbours that k captions remain after dropping the query's own clip.
    depth = min(len(x), k + 1)
    out: dict[str, list[str]] = {}
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ x.T  # [C, N]
        for row, qid in enumerate(query_ids[start : start + chunk]):
            own = key_pos.get(qid)
            if own is not None:
                sims[row, own] = -np.inf
        if depth < sims.shape[1]:
            cand = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]  # O(N), unordered
        else:
            cand = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        cand_sims = np.take_along_axis(sims, cand, 1)
        # Nearest first; among equal similarities, the earlier key first.
        top = np.take_along_axis(cand, np.lexsort((cand, -cand_sims), axis=1), 1)
        for row, qid in enumerate(query_ids[start : start + chunk]):
            caps: list[str] = []
            for i in top[row]:
                if i == key_pos.get(qid):
                    continue
                caps.extend(key_captions[i][: k - len(caps)])
                if len(caps) >= k:
                    break
            out[qid] = caps
    return out


def table(rows: Mapping[str, MetricsResult]) -> list[dict[str, Any]]:
    """One dict per row, in the given row order: ``system``, ``n``, then the paper's columns
    (BLEU-1..4, METEOR, CIDEr-D, ROUGE-L, SPICE, SPIDEr) and BERTScore when any row has it.
    Unavailable values are ``None``."""
    columns = list(PAPER_COLUMNS)
    if any(BERTSCORE_COLUMN[1] in r.corpus for r in rows.values()):
        columns.append(BERTSCORE_COLUMN)
    out = []
    for name, res in rows.items():
        row: dict[str, Any] = {"system": name, "n": res.n}
        for header, key in columns:
            row[header] = res.corpus.get(key)
        out.append(row)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def render_table(rows: Mapping[str, MetricsResult], notes: bool = True) -> str:
    """Plain-text table (3 decimals, "n/a" for unavailable), then one line per unavailable
    metric saying why. The CLI may render :func:`table` with rich instead."""
    data = table(rows)
    headers = [h for h in data[0]] if data else ["system"]
    cells = [headers] + [[_fmt(r[h]) for h in headers] for r in data]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = []
    for n, c in enumerate(cells):
        lines.append(
            "  ".join(
                c[0].ljust(widths[0]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        reasons: dict[str, str] = {}
        for res in rows.values():
            for key, why in res.unavailable.items():
                reasons.setdefault(key, why)
        header_of = dict((k, h) for h, k in (*PAPER_COLUMNS, BERTSCORE_COLUMN))
        for key, why in reasons.items():
            lines.append(f"{header_of.get(key, key)}: n/a: {why}")
    return "\n".join(lines) + "\n"


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def save_results(out_dir: str | Path, rows: Mapping[str, MetricsResult], cfg: EvalConfig) -> None:
    """Write ``table.json`` (rows + unavailable reasons), ``per_clip.jsonl`` (one line per
    system and clip) and ``eval_config.json`` into ``out_dir``; NaN/unavailable become null."""
    out_dir = Path(out_dir)
    keys = metric_keys(cfg.metrics)
    payload = {
        "rows": [{k: _json_value(v) for k, v in r.items()} for r in table(rows)],
        "unavailable": {
            name: dict(res.unavailable) for name, res in rows.items() if res.unavailable
        },
    }
    atomic_write_text(out_dir / "table.json", json.dumps(payload, indent=2) + "\n")
    write_per_clip(out_dir / "per_clip.jsonl", rows, keys)
    save_config(cfg, out_dir / "eval_config.json")


def write_per_clip(
    path: str | Path, rows: Mapping[str, MetricsResult], keys: Sequence[str] | None = None
) -> None:
    """One JSON line per system and clip: ``{"system", "clip", <metric key>: score}`` (only
    ``keys`` when given); NaN/unavailable become null."""
    lines = []
    for name, res in rows.items():
        for cid, scores in res.per_clip.items():
            vals = {k: _json_value(v) for k, v in scores.items() if keys is None or k in keys}
            lines.append(json.dumps({"system": name, "clip": cid, **vals}))
    atomic_write_text(Path(path), "".join(f"{ln}\n" for ln in lines))
