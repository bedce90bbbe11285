"""The evaluation run behind ``audiocap eval``: score a model (or a predictions file) on a
dataset split, optionally with the paper's Table 1 scopes (retrieval-only rows, the oracle
decoder and Human). It reports through a :class:`~audiocap_cli.pipeline.runs.Reporter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..datasets import Clip, load_split
from ..errors import DatasetError, UsageError
from ..pipeline.modeldir import ModelDir
from ..pipeline.runs import Reporter, clip_features
from . import evaluate as ev


def eval_dataset(dataset: str | Path | None, model: str | Path | None) -> tuple[Path, bool]:
    """The dataset ``eval`` scores against: ``dataset``, else the one ``model`` records.
    Returns (path, recorded); neither known is a one-line UsageError."""
    if dataset is not None:
        return Path(dataset), False
    md = ModelDir(model) if model is not None else None
    recorded = md.dataset() if md is not None else None
    if recorded is None:
        why = (
            "no --model to take it from"
            if md is None
            else f"{model} is not a model directory"
            if not md.exists()
            else "the model records none: it was not trained on a dataset folder"
        )
        raise UsageError(f"--dataset is required: the references come from its split ({why})")
    return recorded, True


def _predict(captioner, clips: Sequence[Clip], rep: Reporter) -> dict[str, str]:
    """The full system's caption of every clip (first window), by clip id."""
    from ..pipeline.records import CaptionRecord

    out: dict[str, str] = {}
    advance = rep.progress("captioning", len(clips))
    bs = max(1, captioner.opts.batch_size)
    for s in range(0, len(clips), bs):
        batch = clips[s : s + bs]
        for clip, recs in zip(batch, captioner.caption_batch([str(c.path) for c in batch])):
            rec = CaptionRecord.from_json(recs[0])
            if rec.failed:
                raise DatasetError(str(clip.path), [str(rec.error)])
            out[clip.id] = str(rec.caption)
        advance(len(batch))
    return out


def evaluate(
    dataset: str | Path,
    split: str = "test",
    model: str | Path | None = None,
    predictions: str | Path | None = None,
    scope: str = "system",
    train_split: str = "train",
    bertscore: bool = False,
    spice_dir: str | Path | None = None,
    java: str = "java",
    beam_size: int = 4,
    sim_cfg=None,
    rep: Reporter = Reporter(),
) -> dict:
    """Score a system on ``split`` of ``dataset`` -> rows name -> MetricsResult.

    ``predictions``: score that file; else caption the split's clips with ``model``.
    ``scope="all"``: the paper's Table 1: the system, retrieval-only captioning (1NN on raw
    mean-pooled frames, the model's own retrieval, the Top1-BERTScore oracle), the oracle
    decoder "Ours (GT)" (top-K BERTScore captions of ``train_split`` as guidance) and Human.
    No clip's own captions ever serve as its guidance or retrieval result: the candidates come
    from ``train_split`` only, and any candidate clip sharing the test clip's id is excluded.
    """
    from ..pipeline.records import match_predictions, read_predictions
    from ..text import similarity

    if scope not in ("system", "all"):
        raise UsageError(f"unknown scope {scope!r}: system or all")
    clips = load_split(dataset, split, require_audio=predictions is None or scope == "all")
    refs = {c.id: list(c.captions) for c in clips}
    rep.say(f"{len(clips)} {split} clips, {sum(map(len, refs.values()))} references")
    scopes: list = []
    captioner = None
    if predictions is not None:
        preds = read_predictions(predictions)
        m = match_predictions(
            preds, refs, paths={c.id: str(c.path) for c in clips if c.path is not None}
        )
        if preds.errors:
            rep.say(f"warning: {len(preds.errors)} error records in {predictions} (not scored)")
        if m.unmatched:
            rep.say(
                f"warning: {len(m.unmatched)} predictions match no {split} clip (e.g. {m.unmatched[0]})"
            )
        if m.missing:
            raise DatasetError(
                predictions,
                [f"no prediction for {len(m.missing)} of {len(clips)} clips (e.g. {m.missing[0]})"],
            )
        scopes.append(ev.Scope(ev.OURS, m.predictions))
    if model is not None and (predictions is None or scope == "all"):
        from ..generation.decoding import DecodingOptions
        from ..pipeline.captioner import Captioner, CaptionOptions

        captioner = Captioner(model, CaptionOptions(DecodingOptions(beam_size=beam_size)))
        if predictions is None:
            scopes.append(
                ev.Scope(
                    ev.OURS
                    if captioner.decoder is not None
                    else f"{captioner.cfg.retrieval}-retrieval",
                    _predict(captioner, clips, rep),
                )
            )
    if scope == "all":
        if captioner is None:
            raise DatasetError(
                dataset, ["--scope all needs --model (its encoder, retriever and decoder)"]
            )
        scopes += _paper_scopes(
            captioner, clips, dataset, train_split, sim_cfg or similarity.SimilarityConfig(), rep
        )
    if not scopes:
        raise DatasetError(dataset, ["nothing to score: give --model or --predictions"])
    metrics = ev.EvalConfig().metrics + (("bertscore",) if bertscore else ())
    return ev.evaluate_scopes(
        scopes,
        refs,
        ev.EvalConfig(metrics=metrics),
        spice_dir=spice_dir,
        java=java,
        bertscore_cfg=(sim_cfg or similarity.SimilarityConfig()) if bertscore else None,
    )


def _paper_scopes(
    captioner, clips: Sequence[Clip], dataset, train_split: str, sim_cfg, rep: Reporter
) -> list:
    """Rows (ii) and (iii) of the paper's Table 1 for the test ``clips``."""
    from ..retrieval.retriever import mean_pool
    from ..text.bertscore import top_bertscore

    ids = [c.id for c in clips]
    frames, scores = clip_features(
        clips,
        captioner.encoder,
        captioner.cfg,
        captioner.cache,
        rep,
        "test",
        scores_of=lambda f: captioner.window_scores(f, 0),
    )
    rows = []
    train = load_split(dataset, train_split, require_audio=False)
    if all(c.path is not None for c in train):
        tr_frames, _ = clip_features(
            train, captioner.encoder, captioner.cfg, captioner.cache, rep, train_split
        )
        nn = ev.nearest_captions(
            mean_pool(frames),
            ids,
            mean_pool(tr_frames),
            [c.id for c in train],
            [c.captions for c in train],
            k=1,
        )
        rows.append(
            ev.Scope(
                ev.nn_name(captioner.cfg.encoder),
                {i: v[0] for i, v in nn.items()},
                group="retrieval",
            )
        )
    else:
        rep.say(f"note: {train_split} has no audio: no 1NN row")
    hits = captioner.retrieve(frames, scores, exclude_ids=ids)
    rows.append(
        ev.Scope(
            captioner.retrieval.name,
            {i: g[0] for i, g in zip(ids, captioner.guidance_of(hits))},
            group="retrieval",
        )
    )
    pool = [cap for c in train for cap in c.captions]
    owner: dict[str, list[int]] = {}
    for j, cid in enumerate(c.id for c in train for _ in c.captions):
        owner.setdefault(cid, []).append(j)  # a test clip that is also in train never sees its own
    exclude = [owner.get(i, []) for i in ids]
    k = captioner.k
    idx, _ = top_bertscore(
        [c.captions for c in clips],
        pool,
        k,
        sim_cfg,
        exclude=exclude,
        progress=rep.progress("BERTScore oracle (pool captions)", len(pool)),
    )
    gt = [[pool[j] for j in row if j >= 0] for row in idx]
    rows.append(ev.Scope(ev.TOP1_BERTSCORE, {i: g[0] for i, g in zip(ids, gt)}, group="retrieval"))
    if captioner.decoder is not None:
        caps = captioner.generate(gt, frames, scores)
        rows.append(ev.Scope(ev.OURS_GT, dict(zip(ids, caps)), group="oracle"))
    return rows
