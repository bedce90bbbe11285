"""The label-grounded captioner: caption corpora whose clips carry AudioSet labels.

Every AudioCaps clip is an AudioSet segment, so its caption comes with the sound classes of
its clip (``audioset.py``), in the class space in which YAMNet scores audio. That gives:

* retrieval: label sets indexed by their label vectors, queried with a clip's pooled YAMNet
  scores, consensus re-ranked to K guidance captions (``labelspace.py``);
* decoder training examples that look like captioning: each caption is a target, its audio
  branch reads class scores simulated from its clip's labels (one frame ``[1, C]``: what
  YAMNet's pooled scores give at captioning time), its guidance is what the label-space
  retrieval returns for those simulated scores with the clip itself left out;
* validation without audio: AudioCaps val has labels too, so the same simulation, retrieval
  from train only, the decoder and the caption metrics give a real validation set.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..datasets import read_captions
from ..retrieval import labelspace as ls
from . import audioset, labelsim

if TYPE_CHECKING:  # the decoder module imports torch: only when a decoder is trained
    from .decoder import DecoderTrainConfig

# Seeds of the label -> score simulation: training and validation draw different noise.
TRAIN_SIM_SEED = 0
VAL_SIM_SEED = 1


@dataclass(frozen=True)
class TaggerFit:
    """What was fitted to one tagger's real output (see docs/experiments.md).

    ``simulation``: how its pooled scores differ from labels (bench/fits/simulation_check.py);
    ``score_power``: the query calibration power captioning uses (LabelSpaceConfig.score_power,
    fitted on val and the real clips with bench/fits/labelspace_grid.py and
    bench/quality/grounded_report.py); ``guidance_power``: the power at which the decoder's
    training and validation guidance is retrieved from simulated scores (a decoder trained on
    softer guidance can use the sharper one better than one trained on it); ``set_power``:
    LabelSpaceConfig.set_power (how much nearer label sets count in the consensus).
    """

    simulation: labelsim.Simulation
    score_power: float
    guidance_power: float
    set_power: float = 0.0


FITS = {
    "yamnet": TaggerFit(labelsim.Simulation(), score_power=4.0, guidance_power=3.0),
    # EfficientAT mn04_as is far less confident than YAMNet: a labelled class scores about 0.5,
    # its ancestors less, few unrelated classes fire (fitted on the 50 one-class real clips).
    "efficientat": TaggerFit(
        labelsim.Simulation(
            hit_beta=(2.5, 2.5),
            miss_rate=0.15,
            miss_high=0.25,
            child_rate=0.6,
            child_low=0.6,
            child_max=2.0,
            sibling_rate=0.3,
            sibling_range=(0.02, 0.4),
            sibling_max=1.0,
            intruders=0.5,
            intruder_beta=(0.6, 6.0),
            ancestor_keep=(0.1, 1.25),
        ),
        score_power=1.0,
        guidance_power=1.0,
        set_power=4.0,
    ),
}


def fit_of(encoder: str) -> TaggerFit:
    """The fitted simulation and powers of ``encoder``'s class scores."""
    if encoder not in FITS:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"no label-space fit for encoder {encoder!r}: choose one of {', '.join(FITS)}"
        )
    return FITS[encoder]


def label_space(encoder: str = "yamnet") -> ls.LabelSpaceConfig:
    """The label-space config of a label-grounded model hearing through ``encoder``."""
    return ls.LabelSpaceConfig(
        audio_encoder=encoder,
        num_classes=len(audioset.class_map(encoder)),
        score_power=fit_of(encoder).score_power,
        set_power=fit_of(encoder).set_power,
    )


@dataclass
class LabelledCaptions:
    """Captions (one row each) with their clip's labels ``[N, C]`` in the encoder's class space."""

    captions: list[str]
    labels: np.ndarray  # [N, C] multi-hot
    owner: np.ndarray  # [N] clip index of each caption
    clip_ids: list[str]
    coverage: audioset.LabelCoverage
    encoder: str = "yamnet"  # whose class space the label columns are

    @property
    def clip_labels(self) -> np.ndarray:
        """``[M, C]`` labels per clip."""
        first = np.unique(self.owner, return_index=True)[1]
        return self.labels[first]

    def clip_captions(self) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in self.clip_ids]
        for cap, o in zip(self.captions, self.owner):
            out[o].append(cap)
        return out


def read_labelled(
    path: str | Path,
    labels_dir: str | Path | None = None,
    encoder: str = "yamnet",
    text_labels: bool = False,
) -> LabelledCaptions:
    """A caption manifest with each clip's AudioSet labels attached: its own ``mids`` column
    (generic layout), else the segment CSVs' labels of its AudioCaps (youtube_id, start_time).
    ``text_labels``: also the rare classes its captions name (``textlabels.py``; for a training
    corpus, never for validation, whose labels stand for the truth)."""
    clips = read_captions(path)
    own = {c.id: c.mids for c in clips if c.mids}
    labels, cov = audioset.label_matrix([c.id for c in clips], labels_dir, encoder, extra=own)
    owner = np.repeat(np.arange(len(clips)), [len(c.captions) for c in clips])
    caps = [cap for c in clips for cap in c.captions]
    labels = labels[owner]
    if text_labels:
        labels, cov = _with_text_labels(labels, caps, owner, labels_dir, encoder, cov)
    return LabelledCaptions(caps, labels, owner, [c.id for c in clips], cov, encoder)


def _with_text_labels(
    labels: np.ndarray,
    captions: list[str],
    owner: np.ndarray,
    labels_dir: str | Path | None,
    encoder: str,
    cov: audioset.LabelCoverage,
) -> tuple[np.ndarray, audioset.LabelCoverage]:
    """Rows with the rare classes their captions name, shared by every caption of a clip."""
    from . import textlabels

    path = audioset.ontology_path(labels_dir)
    if path is None:  # the branch check needs the ontology; without it, no text labels
        return labels, cov
    classes = audioset.class_map(encoder)
    branches = audioset.top_branches(path, encoder)
    skip = branches[
        :, [r for r, mid in enumerate(audioset.root_mids(path)) if mid in textlabels.SKIP_BRANCHES]
    ].any(axis=1)
    mined, gained = textlabels.add_text_labels(
        labels, captions, [n for _, n in classes], branches, skip
    )
    per_clip = np.zeros((int(owner.max()) + 1, labels.shape[1]), dtype=np.float32)
    np.maximum.at(per_clip, owner, mined)
    new = per_clip[owner]
    added = int(((new > 0) & ~(labels > 0))[np.unique(owner, return_index=True)[1]].sum())
    return new, dataclasses.replace(cov, text_labels=added, text_classes=len(gained))


def corpus_labels(labels: np.ndarray, cfg: ls.LabelSpaceConfig) -> np.ndarray:
    """The labels the label index is built from: closed under the ontology when ``cfg.ancestors``."""
    if not cfg.ancestors:
        return labels
    h = hierarchy(encoder=cfg.audio_encoder)
    if h is None:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(
            "AudioSet ontology.json not found beside the segment CSVs; "
            f"reinstall `{audioset.LABELS_REQUIREMENT}` (--no-deps)"
        )
    return h.close(labels)


def corpus_of(train: LabelledCaptions, cfg: ls.LabelSpaceConfig) -> ls.LabelCorpus:
    return ls.LabelCorpus.build(corpus_labels(train.labels, cfg), train.captions, cfg)


def hierarchy(labels_dir: str | None = None, encoder: str = "yamnet") -> audioset.Hierarchy | None:
    """AudioSet's ontology in the encoder's class space (None when no ontology.json is found)."""
    path = audioset.ontology_path(labels_dir)
    return _hierarchy(str(path), encoder) if path is not None else None


@functools.lru_cache(maxsize=4)
def _hierarchy(path: str, encoder: str) -> audioset.Hierarchy:
    return audioset.hierarchy(path, encoder)


def simulated(
    labels: np.ndarray,
    prior_labels: np.ndarray,
    seed: int,
    encoder: str = "yamnet",
    sim: labelsim.Simulation | None = None,
) -> np.ndarray:
    """Class scores ``[N, C]`` that ``encoder`` might give clips with ``labels`` (``labelsim``,
    with the ontology; ``sim``: default the encoder's fitted simulation)."""
    return labelsim.simulate(
        labels,
        np.random.default_rng(seed),
        prior_labels.mean(axis=0),
        hierarchy(encoder=encoder),
        sim or fit_of(encoder).simulation,
    )


def train_guidance(
    train: LabelledCaptions,
    corpus: ls.LabelCorpus,
    cfg: ls.LabelSpaceConfig,
    k: int,
    scores: np.ndarray,
    idf: dict[str, float] | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Guidance of every training caption from its clip's (simulated) scores, the clip's own
    captions left out, exactly as the index would answer a new clip with that sound."""
    by_clip: dict[int, set[int]] = {}
    for i, o in enumerate(train.owner):
        by_clip.setdefault(int(o), set()).add(i)
    clip_rows = np.unique(train.owner, return_index=True)[1]
    guid = ls.corpus_guidance(
        corpus,
        scores[clip_rows],
        cfg,
        k,
        [by_clip[int(o)] for o in train.owner[clip_rows]],
        idf,
        advance=advance,
    )
    per_clip = dict(zip(train.owner[clip_rows].tolist(), guid))
    return [per_clip[int(o)] for o in train.owner]


def vocabulary(lm, texts: Sequence[str], max_len: int) -> list[int]:
    """Token ids used by ``texts`` (plus EOS): what a low-rank head predicts over."""
    ids = {t for toks in lm.tokenize(list(texts), max_len) for t in toks}
    ids.add(lm.eos_id)
    return sorted(ids)


def build_index(
    lab: LabelledCaptions,
    model_dir: str | Path,
    model_cfg,
    lcfg: ls.LabelSpaceConfig,
    say=lambda s: None,
) -> ls.LabelCorpus:
    """Index ``lab``'s label sets into ``model_dir/index`` (retrieval kind "labels")."""
    from ..audio.encoders import load_encoder
    from ..config import fingerprint
    from ..pipeline.modeldir import ModelDir

    md = ModelDir(model_dir)
    cfg = md.init(model_cfg, retrieval="labels")
    corpus = corpus_of(lab, lcfg)
    encoder = load_encoder(cfg.encoder, cfg.encoder_weights)
    index = ls.build_index(corpus, lcfg, fingerprint(encoder.config))
    index.save(md.index, extra=lambda f: ls.save_extras(f, lcfg, corpus.weights))
    say(f"indexed {len(corpus.captions)} label sets ({len(lab.captions)} captions) into {md.index}")
    return corpus


def decoder_config(lm, k: int, num_classes: int, lm_spec: str):
    """The label-grounded decoder: audio = pooled class scores (one frame of ``num_classes``),
    separate guidance (per-caption LM features are precomputed), the LM's own features added
    before the head (``residual``), and a low-rank head over the corpus vocabulary."""
    from ..generation.decoder import DecoderConfig

    return DecoderConfig(
        lm=lm_spec,
        d_l=lm.dim,
        d_a=num_classes,
        k=k,
        guidance="separate",
        use_audio=True,
        residual=True,
        head="lowrank",
    )


def decoder_examples(
    lab: LabelledCaptions,
    guidance: list[list[str]],
    scores: np.ndarray,
    rows: Sequence[int] | None = None,
) -> list[tuple[str, list[str], np.ndarray]]:
    """(target, guidance, audio ``[1, C]``) per caption (``rows``: a subset)."""
    rows = range(len(lab.captions)) if rows is None else rows
    return [(lab.captions[i], guidance[i], scores[i][None, :].astype(np.float32)) for i in rows]


def sample_rows(n: int, max_captions: int | None, seed: int = 0) -> np.ndarray:
    """The training captions' rows: a seeded permutation, cut to ``max_captions``. Any prefix of
    it is a uniform sample, so a larger ``max_captions`` extends a smaller run's targets."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm if max_captions is None else perm[:max_captions]


@dataclass
class Plan:
    """Everything the decoder run needs, derived from the corpus (and the validation set)."""

    corpus: ls.LabelCorpus
    train: list[tuple[str, list[str], np.ndarray]]
    val: list[tuple[str, list[str], np.ndarray]]
    val_clips: list[
        tuple[str, list[str], np.ndarray, list[str]]
    ]  # (id, guidance, audio, references)

    def texts(self) -> list[str]:
        """Every caption whose LM features training reads: validation first, then guidance,
        then targets (the order in which an interrupted feature run is most useful)."""
        out = [e[0] for e in self.val] + [c for e in self.val + self.train for c in e[1]]
        return out + [e[0] for e in self.train]


def plan(
    lab: LabelledCaptions,
    lcfg: ls.LabelSpaceConfig,
    k: int,
    max_captions: int | None,
    val: LabelledCaptions | None = None,
    seed: int = 0,
    progress: Callable[[str, int], Callable[[int], None]] = lambda name, total: lambda n: None,
) -> Plan:
    """Label corpus, training examples (simulated scores, leave-one-out guidance) and validation
    examples (AudioCaps val: simulated scores, guidance from the training corpus only). Their
    guidance is retrieved at the encoder's ``TaggerFit.guidance_power``, whatever
    ``lcfg.score_power`` says."""
    from ..text.agreement import ngram_idf

    enc = lcfg.audio_encoder
    lcfg = dataclasses.replace(lcfg, score_power=fit_of(enc).guidance_power)  # what it learns from
    closed = corpus_labels(lab.labels, lcfg)
    corpus = ls.LabelCorpus.build(closed, lab.captions, lcfg)
    idf = ngram_idf(lab.captions) if lcfg.corpus_idf else None
    scores = simulated(lab.labels, lab.labels, TRAIN_SIM_SEED, enc)
    guid = train_guidance(
        lab,
        corpus,
        lcfg,
        k,
        scores,
        idf,
        progress("training guidance (clips)", len(np.unique(lab.owner))),
    )
    rows = sample_rows(len(lab.captions), max_captions, seed)
    val_clips: list[tuple[str, list[str], np.ndarray, list[str]]] = []
    if val is not None:
        vs = simulated(val.clip_labels, lab.labels, VAL_SIM_SEED, enc)
        vg = ls.corpus_guidance(corpus, vs, lcfg, k, None, idf)
        refs = val.clip_captions()
        val_clips = [(cid, g, s[None, :], r) for cid, g, s, r in zip(val.clip_ids, vg, vs, refs)]
        val_ex = [(cap, vg[o], vs[o][None, :]) for cap, o in zip(val.captions, val.owner)]
        train_ex = decoder_examples(lab, guid, scores, rows)
    else:  # hold out 5% of the sampled rows
        n_val = max(1, len(rows) // 20)
        val_ex = decoder_examples(lab, guid, scores, rows[:n_val])
        rows = rows[n_val:]
        train_ex = decoder_examples(lab, guid, scores, rows)
    return Plan(corpus, train_ex, val_ex, val_clips)


def train(
    lab: LabelledCaptions,
    model_dir: str | Path,
    model_cfg,
    lcfg: ls.LabelSpaceConfig | None = None,
    val: LabelledCaptions | None = None,
    epochs: int = 6,
    max_captions: int | None = None,
    lm_spec: str = "smollm2",
    batch_size: int = 128,
    keep_state: bool = False,
    train_cfg: DecoderTrainConfig | None = None,
    say=lambda s: None,
    progress=lambda name, total: lambda n: None,
) -> Path:
    """Label index + guided decoder of the label-grounded captioner into ``model_dir``
    (``epochs`` 0: the index alone, a retrieval-only captioner).

    ``lcfg``: default :func:`label_space` of the model's encoder. ``train_cfg``: a
    ``decoder.DecoderTrainConfig`` whose optimisation (learning-rate schedule) replaces the
    paper's; its batch size and seed are this call's.

    Every step can be interrupted and rerun: the LM features persist chunk by chunk in the
    cache (``lmfeatures.py``) and the decoder run resumes from its last epoch.
    """
    from ..pipeline.modeldir import ModelDir

    lcfg = lcfg or label_space(model_cfg.encoder)
    if lcfg.audio_encoder != lab.encoder:
        from ..errors import ConfigMismatchError

        raise ConfigMismatchError(
            f"labels are in {lab.encoder}'s class space, the label space is {lcfg.audio_encoder}'s"
        )
    build_index(lab, model_dir, model_cfg, lcfg, say)
    md = ModelDir(model_dir)
    cfg = md.load()
    if epochs == 0:  # retrieval only: `caption` prints the consensus guidance
        say("no decoder (epochs 0): captions are the consensus of the retrieved captions")
        return md.path
    p = plan(lab, lcfg, cfg.k, max_captions, val, progress=progress)
    say(
        f"decoder: {len(p.train)} training and {len(p.val)} validation targets, guidance from the label index"
    )
    job = DecoderJob.prepare(p, lab, lcfg, cfg.k, lm_spec, batch_size, say, progress, train_cfg)
    return job.train(md.decoder, epochs, seed=0, keep_state=keep_state)


@dataclass
class DecoderJob:
    """Everything a label-grounded decoder trains from: the plan's examples, the frozen LM with every caption's features in the persistent store,
    the decoder config and the corpus vocabulary of its head."""

    plan: Plan
    lm: Any
    dcfg: Any
    store: Any
    vocab: list[int]
    batch_size: int
    progress: Callable[[str, int], Callable[[int], None]]
    train_cfg: DecoderTrainConfig | None = None  # the schedule; None: the paper's

    @classmethod
    def prepare(
        cls,
        p: Plan,
        lab: LabelledCaptions,
        lcfg: ls.LabelSpaceConfig,
        k: int,
        lm_spec: str,
        batch_size: int,
        say=lambda s: None,
        progress=lambda name, total: lambda n: None,
        train_cfg: DecoderTrainConfig | None = None,
    ) -> DecoderJob:
        from ..generation.lm import load_lm
        from ..generation.lmfeatures import LMFeatureStore

        lm = load_lm(lm_spec)
        dcfg = decoder_config(lm, k, lcfg.num_classes, lm_spec)
        store = LMFeatureStore(lm, dcfg.max_len)
        texts = list(dict.fromkeys(p.texts()))
        missing = sum(t not in store for t in texts)
        if missing:
            say(f"frozen LM features of {missing} captions (kept in {store.dir})")
            store.ensure(texts, progress("LM features", missing))
        vocab = vocabulary(lm, lab.captions, dcfg.max_len)
        return cls(p, lm, dcfg, store, vocab, batch_size, progress, train_cfg)

    def train(self, out_dir: Path, epochs: int, seed: int, keep_state: bool) -> Path:
        """Teacher forcing of one decoder (``seed``: its init, shuffling and dropout) into ``out_dir``."""
        from .decoder import DecoderTrainConfig, train_decoder

        p = self.plan
        tcfg = dataclasses.replace(
            self.train_cfg or DecoderTrainConfig(),
            batch_size=self.batch_size,
            seed=seed,
        )
        return train_decoder(
            p.train,
            self.dcfg,
            self.lm,
            out_dir,
            epochs,
            val_examples=p.val or None,
            train_cfg=tcfg,
            progress=self.progress("decoder training (examples)", len(p.train) * epochs),
            keep_state=keep_state,
            vocab_ids=self.vocab,
            features=self.store,
        )
