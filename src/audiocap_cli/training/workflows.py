"""The training and indexing runs behind ``audiocap train-retriever | build-index |
train-decoder | bootstrap``: each loads a dataset, gets frozen features from the cache, calls
one stage's training code and writes into the model directory.

Kept out of ``cli.py`` so that a test (or another program) can call them; they report through
a :class:`~audiocap_cli.pipeline.runs.Reporter`. The evaluation run is ``evaluation/run.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..audio.features import FeatureCache
from ..config import fingerprint, save_config
from ..datasets import Clip, load_split, read_captions
from ..errors import DatasetError, ModelNotFoundError, UsageError
from ..pipeline.modeldir import ModelConfig, ModelDir
from ..pipeline.runs import Reporter, clip_features
from ..scale import distributed


def caption_labels(captions: Sequence[str], sim_cfg, directory: Path, rep: Reporter):
    """Caption-level "similar" labels, reused from ``directory`` when nothing changed."""
    from ..text import similarity

    bar = None

    def progress(n: float) -> None:  # a bar only when they are computed, not when reused
        nonlocal bar
        if bar is None:
            bar = rep.progress("caption similarity (%)", 100)
        bar(n)

    return similarity.cached_similarity_labels(captions, sim_cfg, directory, progress=progress)


def clip_labels(clips: Sequence[Clip], sim_cfg, directory: Path, rep: Reporter) -> list[np.ndarray]:
    """Similar clips of every clip (see similarity.clip_similarity for several captions)."""
    from ..text import similarity

    caps = [c.captions for c in clips]
    labels = caption_labels([c for cs in caps for c in cs], sim_cfg, directory, rep)
    return similarity.clip_similarity(caps, sim_cfg, labels=labels)


def _encoder_for(cfg: ModelConfig, device: str = "cpu"):
    from ..audio.encoders import load_encoder

    return load_encoder(cfg.encoder, cfg.encoder_weights, device=device)


def _sim_dir(md: ModelDir, what: str) -> Path:
    return md.similarity / what


def dataset_ref(dataset: str | Path) -> str:
    """How a model records the dataset it was trained on: an absolute path."""
    return str(Path(dataset).resolve())


# --------------------------------------------------------------------------- train-retriever


def train_retriever(
    dataset: str | Path,
    model_dir: str | Path,
    model_cfg: ModelConfig,
    epochs: int,
    split: str = "train",
    val_split: str = "val",
    batch_size: int = 128,
    sim_cfg=None,
    resume: bool = True,
    cache: FeatureCache | None = None,
    rep: Reporter = Reporter(),
    seed: int = 0,
    keep_state: bool = False,
) -> Path:
    """Train the triplet retriever on ``split`` of ``dataset`` into ``model_dir/retriever``
    (the model records ``dataset``; ``keep_state``: keep the resumable state of a finished run)."""
    from ..retrieval.retriever import RetrieverConfig
    from ..text import similarity
    from .retriever import train_retriever as _train

    train, val = load_split(dataset, split), load_split(dataset, val_split)
    md = ModelDir(model_dir)
    cache = cache or FeatureCache()
    sim_cfg = sim_cfg or similarity.SimilarityConfig()
    with distributed.rank0_first():  # under torchrun rank 0 fills the caches the others read
        cfg = (
            md.init(model_cfg, retrieval="triplet", dataset=dataset_ref(dataset))
            if distributed.is_main()
            else md.load()
        )
        encoder = _encoder_for(cfg)
        rep.say(f"{len(train)} {split} clips, {len(val)} {val_split} clips")
        tr_frames, _ = clip_features(train, encoder, cfg, cache, rep, split)
        va_frames, _ = clip_features(val, encoder, cfg, cache, rep, val_split)
        tr_sim = clip_labels(train, sim_cfg, _sim_dir(md, split), rep)
        va_sim = clip_labels(val, sim_cfg, _sim_dir(md, val_split), rep)
    n_pos = sum(len(s) > 0 for s in tr_sim)
    rep.say(f"similar clips: {n_pos}/{len(train)} training clips have at least one")
    rcfg = RetrieverConfig(
        encoder=cfg.encoder,
        encoder_fingerprint=fingerprint(encoder.config),
        d_a=encoder.dim,
        frames=tr_frames.shape[1],
        batch_size=batch_size,
    )
    return _train(
        tr_frames,
        tr_sim,
        va_frames,
        va_sim,
        rcfg,
        md.retriever,
        epochs,
        resume=resume,
        progress=rep.progress("retriever epochs", epochs),
        seed=seed,
        keep_state=keep_state,
    )


# --------------------------------------------------------------------------- build-index


def build_index(
    dataset: str | Path,
    model_dir: str | Path,
    model_cfg: ModelConfig,
    split: str = "train",
    kind: str = "triplet",
    add: bool = False,
    cache: FeatureCache | None = None,
    rep: Reporter = Reporter(),
) -> Path:
    """Index every clip of ``split`` with the trained retriever (``kind="triplet"``) or with
    mean-pooled raw frames (``kind="mean"``, the paper's 1NN baseline).

    ``add``: keep the existing index (its config must match) and add the clips it lacks,
    without a rebuild."""
    from ..retrieval import retriever
    from ..retrieval.index import CaptionIndex, IndexConfig

    clips = load_split(dataset, split)
    md = ModelDir(model_dir)
    if kind not in ("triplet", "mean"):
        raise UsageError(f"unknown index kind {kind!r}: triplet or mean")
    cfg = md.init(model_cfg, retrieval=kind, dataset=dataset_ref(dataset))
    cache = cache or FeatureCache()
    encoder = _encoder_for(cfg)
    enc_fp = fingerprint(encoder.config)
    frames, _ = clip_features(clips, encoder, cfg, cache, rep, split)
    if kind == "triplet":
        net = retriever.load_retriever(md.retriever, enc_fp)
        vectors = retriever.embed(net, frames)
        embedder = retriever.retriever_id(md.retriever)
    elif kind == "mean":
        vectors, embedder = retriever.mean_pool(frames), f"mean:{enc_fp}"
    else:
        raise UsageError(f"unknown index kind {kind!r}: triplet or mean")
    icfg = IndexConfig(dim=vectors.shape[1], embedder=embedder, encoder=enc_fp)
    if add and md.index.is_dir():
        index = CaptionIndex.load(md.index, expected=icfg)
        have = set(index.ids)
        new = [i for i, c in enumerate(clips) if c.id not in have]
        index.add(vectors[new], [clips[i].id for i in new], [clips[i].captions for i in new])
        rep.say(
            f"added {len(new)} new clips ({len(clips) - len(new)} already indexed) to {md.index}"
        )
    else:
        index = CaptionIndex.build(
            vectors, [c.id for c in clips], [c.captions for c in clips], icfg
        )
        rep.say(f"indexed {len(clips)} clips ({vectors.shape[1]} dims, {kind}) into {md.index}")
    index.save(md.index)
    return md.index


def build_caption_index(
    corpus: str | Path,
    model_dir: str | Path,
    model_cfg: ModelConfig,
    zcfg=None,
    rep: Reporter = Reporter(),
) -> Path:
    """Text-only bootstrap, step 1: index a caption corpus (no audio) in the space that
    AudioSet tags share with captions (see zeroshot.py)."""
    from ..retrieval import zeroshot
    from ..retrieval.index import CaptionIndex, IndexConfig

    captions = [cap for clip in read_captions(corpus) for cap in clip.captions]
    md = ModelDir(model_dir)
    cfg = md.init(model_cfg, retrieval="zeroshot")
    zcfg = zeroshot.resolve_config(
        zcfg
        or zeroshot.ZeroShotConfig(
            audio_encoder=cfg.encoder, num_classes=len(zeroshot.class_names(cfg.encoder))
        )
    )
    texts, _counts, vectors = zeroshot.corpus_vectors(
        captions, zcfg, rep.progress("embedding captions", None)
    )
    rep.say(f"{len(captions)} captions, {len(texts)} indexed")
    encoder = _encoder_for(cfg)
    # The captioner asks for rerank_pool neighbours: hnswlib needs ef >= k for good recall.
    icfg = IndexConfig(
        dim=vectors.shape[1],
        embedder=zeroshot.embedder_id(zcfg),
        encoder=fingerprint(encoder.config),
        ef_search=max(200, 2 * zcfg.rerank_pool),
    )
    ids = [f"c{i}" for i in range(len(texts))]
    index = CaptionIndex.build(
        np.asarray(vectors, dtype=np.float32), ids, [(t,) for t in texts], icfg
    )
    index.save(
        md.index, extra=lambda folder: save_config(zcfg, folder / zeroshot.CONFIG_NAME)
    )  # one version
    rep.say(f"indexed {len(texts)} captions ({vectors.shape[1]} dims) into {md.index}")
    return md.index


# --------------------------------------------------------------------------- train-decoder


def _pools(
    captions: Sequence[str],
    labels,
    owner: np.ndarray | None,
    k: int,
    fallback: np.ndarray | None = None,
) -> list[list[str]]:
    """Guidance pool of every target caption: its "similar" captions (never the target's own
    clip, never the target's exact text, which would teach copying). Targets with fewer than
    K similar captions are topped up from ``fallback`` [N, F] (each caption's nearest others,
    best first), so that no example trains with empty guidance."""
    pools: list[list[str]] = []
    for i, cap in enumerate(captions):
        idx, _ = labels.neighbours(i)
        seen = {cap}
        pool: list[str] = []
        for j in list(idx) + (list(fallback[i]) if fallback is not None and len(idx) < k else []):
            if (owner is not None and owner[j] == owner[i]) or captions[j] in seen:
                continue
            seen.add(captions[j])
            pool.append(captions[j])
        pools.append(pool)
    return pools


def _nearest_text(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[N, k]`` of each row's nearest other rows by cosine (unit vectors), in blocks."""
    out = np.zeros((len(vectors), k), dtype=np.int64)
    for s in range(0, len(vectors), 1024):
        sims = vectors[s : s + 1024] @ vectors.T
        np.fill_diagonal(sims[:, s : s + 1024], -np.inf)
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out[s : s + 1024] = np.take_along_axis(top, order, 1)
    return out


def _split_val(n: int, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * frac))) if n > 20 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_decoder(
    dataset: str | Path,
    model_dir: str | Path,
    epochs: int,
    split: str = "train",
    val_split: str | None = "val",
    batch_size: int = 512,
    lm_spec: str = "smollm2",
    guidance: str = "separate",
    text_only: bool = False,
    audio: str = "auto",
    max_captions: int | None = None,
    resume: bool = True,
    sim_cfg=None,
    cache: FeatureCache | None = None,
    rep: Reporter = Reporter(),
    seed: int = 0,
    residual: bool = False,
    keep_state: bool = False,
) -> Path:
    """Train the guided decoder into ``model_dir/decoder`` (``keep_state``: keep the resumable
    state of a finished run; with audio, the model records ``dataset``).

    With audio: every caption of every ``split`` clip is a target; its guidance pool is its
    "similar" captions from other clips; the audio branch reads the clip's encoder frames.
    ``text_only``: ``dataset`` is a caption corpus; the audio branch is either off
    (``audio="none"``) or reads pseudo-audio (``audio="tags"``): the target caption's vector in
    the zero-shot tag space, which at captioning time comes from the clip's AudioSet scores.
    """
    from ..generation.decoder import DecoderConfig
    from ..generation.lm import load_lm
    from .decoder import train_decoder as _train

    md = ModelDir(model_dir)
    cfg = md.load()
    audio = _audio_mode(audio, text_only, cfg.retrieval, dataset)
    lm = load_lm(lm_spec)
    with distributed.rank0_first():  # rank 0 fills the caches the other ranks then read
        if text_only:
            train_ex, val_ex, d_a = _text_only_examples(
                dataset, md, cfg.k, audio, max_captions, sim_cfg, seed, rep
            )
        else:
            train_ex, val_ex, d_a = _paired_examples(
                dataset, md, cfg, split, val_split, sim_cfg, cache, rep
            )
    empty = sum(not p for _, p, _ in train_ex)
    if empty:
        rep.say(
            f"warning: {empty} of {len(train_ex)} targets have no similar caption (they train without guidance)"
        )
    dcfg = DecoderConfig(
        lm=lm_spec,
        d_l=lm.dim,
        d_a=d_a,
        k=cfg.k,
        guidance=guidance,
        use_audio=audio != "none",
        residual=residual,
    )
    total = len(train_ex) * epochs
    return _train(
        train_ex,
        dcfg,
        lm,
        md.decoder,
        epochs,
        batch_size=batch_size,
        resume=resume,
        progress=rep.progress("decoder training (examples)", total),
        seed=seed,
        val_examples=val_ex or None,
        keep_state=keep_state,
    )


def _audio_mode(audio: str, text_only: bool, retrieval: str, dataset: str | Path) -> str:
    """The decoder's audio branch: ``auto`` resolved, the combination checked."""
    if audio == "auto":
        audio = ("tags" if retrieval == "zeroshot" else "none") if text_only else "frames"
    if audio not in ("frames", "tags", "none"):
        raise UsageError(f"unknown audio mode {audio!r}: frames, tags, none or auto")
    if audio == "frames" and text_only:
        raise DatasetError(dataset, ["--text-only has no audio frames: use --audio tags or none"])
    return audio


def _text_only_examples(
    dataset: str | Path,
    md: ModelDir,
    k: int,
    audio: str,
    max_captions: int | None,
    sim_cfg,
    seed: int,
    rep: Reporter,
) -> tuple[list, list, int]:
    """(train, val, d_a) decoder examples of a caption corpus: each caption a target, its
    similar (else nearest) captions its pool, its tag-space vector its pseudo-audio."""
    from ..retrieval import zeroshot
    from ..text import similarity

    rng = np.random.default_rng(seed)
    sim_cfg = sim_cfg or similarity.SimilarityConfig()
    captions = list(dict.fromkeys(c for clip in read_captions(dataset) for c in clip.captions))
    if max_captions is not None and len(captions) > max_captions:
        captions = [
            captions[i] for i in np.sort(rng.choice(len(captions), max_captions, replace=False))
        ]
    rep.say(f"text-only decoder: {len(captions)} distinct target captions")
    labels = caption_labels(
        captions, sim_cfg, _sim_dir(md, f"text-{similarity.captions_hash(captions)[:12]}"), rep
    )
    zcfg = (
        zeroshot.load_config_of(md.index)
        if audio == "tags"
        else zeroshot.resolve_config(zeroshot.ZeroShotConfig(variant="sentence", top_k=0))
    )
    tvec = np.asarray(
        zeroshot.caption_vectors(
            captions, zcfg, progress=rep.progress("caption vectors", len(captions))
        ),
        dtype=np.float32,
    )
    unit = tvec / np.maximum(np.linalg.norm(tvec, axis=1, keepdims=True), 1e-12)
    pools = _pools(captions, labels, None, k, _nearest_text(unit, min(2 * k, len(captions) - 1)))
    frames = (
        [tvec[i][None, :] for i in range(len(captions))]
        if audio == "tags"
        else [None] * len(captions)
    )
    examples = list(zip(captions, pools, frames))
    tr, va = _split_val(len(examples), 0.05, rng)
    return (
        [examples[i] for i in tr],
        [examples[i] for i in va],
        (tvec.shape[1] if audio == "tags" else 1),
    )


def _paired_examples(
    dataset: str | Path,
    md: ModelDir,
    cfg: ModelConfig,
    split: str,
    val_split: str | None,
    sim_cfg,
    cache: FeatureCache | None,
    rep: Reporter,
) -> tuple[list, list, int]:
    """(train, val, d_a) decoder examples of a paired dataset: every caption of every clip a
    target, its "similar" captions from other clips its pool, the clip's frames its audio."""
    from ..text import similarity

    sim_cfg = sim_cfg or similarity.SimilarityConfig()
    cache = cache or FeatureCache()
    encoder = _encoder_for(cfg)
    clips = load_split(dataset, split)
    cfg = md.init(cfg, dataset=dataset_ref(dataset)) if distributed.is_main() else md.load()
    train_ex = _split_examples(clips, split, md, cfg, encoder, cache, sim_cfg, rep)
    val_ex = (
        _split_examples(
            load_split(dataset, val_split), val_split, md, cfg, encoder, cache, sim_cfg, rep
        )
        if val_split
        else []
    )
    return train_ex, val_ex, encoder.dim


def _split_examples(
    clips: Sequence[Clip],
    what: str,
    md: ModelDir,
    cfg: ModelConfig,
    encoder,
    cache: FeatureCache,
    sim_cfg,
    rep: Reporter,
) -> list:
    frames, _ = clip_features(clips, encoder, cfg, cache, rep, what)
    flat = [c for clip in clips for c in clip.captions]
    owner = np.repeat(np.arange(len(clips)), [len(c.captions) for c in clips])
    labels = caption_labels(flat, sim_cfg, _sim_dir(md, what), rep)
    return [
        (cap, pool, frames[o])
        for cap, pool, o in zip(flat, _pools(flat, labels, owner, cfg.k), owner)
    ]


def bootstrap(
    corpus: str | Path,
    model_dir: str | Path,
    epochs: int = 6,
    max_captions: int | None = None,
    lm_spec: str = "smollm2",
    audio: str = "tags",
    encoder: str = "efficientat",
    batch_size: int | None = None,
    residual: bool = True,
    rep: Reporter = Reporter(),
    keep_state: bool = False,
    labels: str | Path | None = None,
    val: str | Path | None = None,
    text_bridge: bool = False,
) -> Path:
    """Caption corpus -> captioner, with no paired audio.

    With AudioSet labels for the corpus' clips (AudioCaps; ``labels``: a folder of segment
    CSVs, default the installed wheel's): the label-grounded captioner (``grounded.py``: label
    index + decoder on all captions, ``max_captions`` of them if given; ``val``: a labelled
    validation manifest such as AudioCaps val). Otherwise, or with ``text_bridge``: the
    zero-shot caption index, then the text-only decoder on a sample (3,000) of the captions.
    """
    from . import grounded

    lab = None if text_bridge else _labelled(corpus, labels, encoder, rep)
    if lab is not None:
        rep.say("building the label-grounded captioner (AudioSet labels)")
        vlab = grounded.read_labelled(val, labels, encoder) if val is not None else None
        if vlab is not None:
            rep.say("validation labels: " + vlab.coverage.describe())
        return grounded.train(
            lab,
            model_dir,
            ModelConfig(encoder=encoder),
            val=vlab,
            epochs=epochs,
            max_captions=max_captions,
            lm_spec=lm_spec,
            batch_size=batch_size or 128,
            keep_state=keep_state,
            say=rep.say,
            progress=rep.progress,
        )
    rep.say(
        "building the text-bridge captioner (zero-shot AudioSet tags; no labels for this corpus)"
    )
    build_caption_index(corpus, model_dir, ModelConfig(encoder=encoder), rep=rep)
    return train_decoder(
        corpus,
        model_dir,
        epochs,
        text_only=True,
        audio=audio,
        max_captions=max_captions or 3000,
        lm_spec=lm_spec,
        batch_size=batch_size or 32,
        residual=residual,
        rep=rep,
        keep_state=keep_state,
    )


def _labelled(corpus: str | Path, labels: str | Path | None, encoder: str, rep: Reporter):
    """The corpus with AudioSet labels when at least half its clips have some, else None."""
    from . import grounded

    try:
        lab = grounded.read_labelled(corpus, labels, encoder, text_labels=True)
    except ModelNotFoundError as e:
        if labels is not None:
            raise
        rep.say(f"no AudioSet labels: {e}")
        return None
    rep.say("labels: " + lab.coverage.describe())
    return lab if lab.coverage.labelled * 2 >= max(lab.coverage.clips, 1) else None
