"""Zero-shot caption retrieval with no paired audio: a caption corpus, YAMNet and a sentence encoder.

YAMNet scores a clip against the 521 AudioSet classes; the sentence encoder places both the
class names and the corpus captions in one 384-d sentence space. That gives two shared
spaces in which an audio clip and a caption are comparable:

``profile``   R^521: a caption becomes its softmax similarity profile over the class-name
              embeddings, p = softmax(e_c K^T / tau); a clip becomes its (weighted) class scores.
``sentence``  R^384: a clip becomes the score-weighted mean of its top-k class-name embeddings;
              a caption is its own sentence embedding.
``hybrid``    both, concatenated with weights sqrt(alpha), sqrt(1-alpha) so that the inner
              product is alpha * cos_profile + (1 - alpha) * cos_sentence.

Every vector is L2-normalised, so an L2 (hnswlib) index ranks exactly as cosine similarity.
Retrieval returns a pool of captions; :func:`agreement.consensus_rerank` then picks the caption
that agrees most with the rest of the pool (TF-IDF n-gram cosine, like CIDEr's consensus idea).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..audio.encoders.yamnet import (
    NUM_CLASSES,  # the scores' last axis, in yamnet_class_map.csv order
)
from ..config import fingerprint
from ..errors import ConfigMismatchError, ModelNotFoundError
from ..text.agreement import words
from ..vectors import l2_normalize

VARIANTS = ("profile", "sentence", "hybrid")
POOLS = ("mean", "max")

# Classes that name a recording condition or a signal, not a sound source a caption would
# mention ("Inside, small room", "Static", ...): AudioSet's acoustic-environment and
# noise branches plus a few abstract classes. Dropped from both sides when drop_generic.
GENERIC_CLASSES: tuple[str, ...] = (
    "Silence",
    "Sine wave",
    "Harmonic",
    "Chirp tone",
    "Sound effect",
    "Pulse",
    "Inside, small room",
    "Inside, large room or hall",
    "Inside, public space",
    "Outside, urban or manmade",
    "Outside, rural or natural",
    "Reverberation",
    "Echo",
    "Noise",
    "Environmental noise",
    "Static",
    "Mains hum",
    "Distortion",
    "Sidetone",
    "Cacophony",
    "White noise",
    "Pink noise",
    "Throbbing",
    "Vibration",
    "Field recording",
)


@dataclass(frozen=True)
class ZeroShotConfig:
    """How captions and audio class scores become vectors of one shared space."""

    # Defaults are the winners of bench/quality/bootstrap_report.py --grid (337 labelled real clips,
    # AudioCaps train captions as the corpus): "sentence" with the top 5 classes had the best
    # CIDEr-D, top-1 and after re-ranking; the profile needs a sharp softmax (T=0.02) to compete.
    variant: str = "sentence"  # profile | sentence | hybrid (see module docstring)
    text_model: str = "minilm"  # textembed.SentenceEncoder model
    text_fingerprint: str = ""  # TextEncoderConfig fingerprint, filled by resolve_config
    audio_encoder: str = "yamnet"  # whose class scores the audio side takes
    num_classes: int = NUM_CLASSES
    class_template: str = "{name}"  # text embedded per class; {name} = each comma-separated synonym
    drop_generic: bool = True  # ignore GENERIC_CLASSES on both sides
    pool: str = "mean"  # frames -> clip scores: mean | max
    temperature: float = 0.02  # profile: softmax temperature over caption-class cosines
    prior_power: float = 0.0  # profile: divide audio scores by (corpus class prior)**power
    top_k: int = 5  # sentence: classes kept per clip (0 = all)
    score_power: float = 1.0  # sentence: weights = scores**power over the kept classes
    alpha: float = 0.5  # hybrid: weight of the profile cosine
    rerank_pool: int = 100  # captions retrieved per clip for consensus re-ranking (0 = off)
    dedupe: bool = True  # index each normalised caption text once

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant {self.variant!r} not one of {VARIANTS}")
        if self.pool not in POOLS:
            problems.append(f"pool {self.pool!r} not one of {POOLS}")
        if self.temperature <= 0:
            problems.append("temperature must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append("alpha must be in [0, 1]")
        if self.top_k < 0 or self.rerank_pool < 0:
            problems.append("top_k and rerank_pool must be >= 0")
        if "{name}" not in self.class_template:
            problems.append("class_template must contain {name}")
        if problems:
            raise ConfigMismatchError("invalid zero-shot config: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        """Dimension of the shared space (the index's E)."""
        if self.variant == "profile":
            return self.num_classes
        sent = _text_dim(self.text_model)
        return sent if self.variant == "sentence" else self.num_classes + sent


CONFIG_NAME = "zeroshot.json"  # beside a caption index: the ZeroShotConfig it was built with


def load_config_of(index_dir: Path) -> ZeroShotConfig:
    """The ZeroShotConfig saved beside a caption index."""
    from ..config import load_config

    path = Path(index_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path}: missing; rebuild the caption index with `audiocap build-index --captions`"
        )
    return load_config(ZeroShotConfig, path)


@lru_cache(maxsize=4)
def _encoder(model: str):  # -> SentenceEncoder (lazy: transformers is heavy)
    from ..text.embed import SentenceEncoder

    return SentenceEncoder(model)


@lru_cache(maxsize=8)
def _text_dim(model: str) -> int:
    return _encoder(model).dim


def resolve_config(cfg: ZeroShotConfig) -> ZeroShotConfig:
    """``cfg`` with ``text_fingerprint`` set from the loaded text encoder (for IndexConfig)."""
    fp = _encoder(cfg.text_model).fingerprint
    if cfg.text_fingerprint and cfg.text_fingerprint != fp:
        raise ConfigMismatchError(
            f"text model {cfg.text_model!r} has fingerprint {fp}, the config expects "
            f"{cfg.text_fingerprint}: the corpus vectors were built with other weights"
        )
    return dataclasses.replace(cfg, text_fingerprint=fp)


def embedder_id(cfg: ZeroShotConfig) -> str:
    """Identity of the caption->vector map, for ``IndexConfig.embedder``."""
    return f"zeroshot-{cfg.variant}-{fingerprint(resolve_config(cfg))}"


# ---------------------------------------------------------------- class names and their vectors


def class_names(audio_encoder: str = "yamnet") -> list[str]:
    """The encoder's AudioSet display names in score order (its shipped class map)."""
    from ..audio.encoders import class_map

    try:
        return [name for _, name in class_map(audio_encoder)]
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"zero-shot retrieval needs class scores; {audio_encoder!r} has none"
        ) from None


def class_mask(cfg: ZeroShotConfig) -> np.ndarray:
    """bool ``[C]``: classes that take part (all but the generic ones when drop_generic)."""
    names = class_names(cfg.audio_encoder)
    if len(names) != cfg.num_classes:
        raise ConfigMismatchError(
            f"class map has {len(names)} classes, config says {cfg.num_classes}"
        )
    generic = set(GENERIC_CLASSES) if cfg.drop_generic else set()
    return np.array([n not in generic for n in names])


def _synonyms(name: str) -> list[str]:
    """'Bee, wasp, etc.' -> ['Bee', 'wasp']: AudioSet names list synonyms after commas."""
    parts = [p.strip() for p in name.split(",")]
    return [p for p in parts if p and p.lower() not in {"etc.", "etc"}] or [name]


@lru_cache(maxsize=8)
def _class_name_vectors(model: str, template: str, audio_encoder: str) -> np.ndarray:
    from ..text.embed import encode_cached

    names = class_names(audio_encoder)
    texts, owner = [], []
    for i, name in enumerate(names):
        for syn in _synonyms(name):
            texts.append(template.format(name=syn.lower()))
            owner.append(i)
    vecs = encode_cached(_encoder(model), texts)  # [S, E] unit rows, S = all synonyms
    out = np.zeros((len(names), vecs.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(owner), vecs)  # mean of a class's synonyms
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out.setflags(write=False)
    return out.astype(np.float32)


def class_name_vectors(cfg: ZeroShotConfig) -> np.ndarray:
    """``[C, E]`` float32 unit rows: each class's synonyms embedded with the template, averaged."""
    return _class_name_vectors(cfg.text_model, cfg.class_template, cfg.audio_encoder)


# ---------------------------------------------------------------- caption and audio vectors

_normalize = l2_normalize


def caption_profiles(sent: np.ndarray, cfg: ZeroShotConfig) -> np.ndarray:
    """Sentence embeddings ``[N, E]`` -> class profiles ``[N, C]`` (softmax over kept classes)."""
    k = class_name_vectors(cfg)
    mask = class_mask(cfg)
    logits = (sent @ k.T) / cfg.temperature  # [N, C]
    logits[:, ~mask] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _combine(
    profile: np.ndarray | None, sent: np.ndarray | None, cfg: ZeroShotConfig
) -> np.ndarray:
    if cfg.variant == "profile":
        return _normalize(profile)
    if cfg.variant == "sentence":
        return _normalize(sent)
    a = math.sqrt(cfg.alpha)
    b = math.sqrt(1.0 - cfg.alpha)
    return np.concatenate([a * _normalize(profile), b * _normalize(sent)], axis=1)


def caption_vectors_from_embeddings(sent: np.ndarray, cfg: ZeroShotConfig) -> np.ndarray:
    """Caption sentence embeddings ``[N, E_text]`` -> shared-space vectors ``[N, cfg.dim]``."""
    sent = np.asarray(sent, dtype=np.float32)
    profile = caption_profiles(sent, cfg) if cfg.variant != "sentence" else None
    return _combine(profile, sent, cfg)


def caption_vectors(
    captions: Sequence[str],
    cfg: ZeroShotConfig,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Captions -> ``[N, cfg.dim]`` float32 unit vectors (sentence embeddings cached on disk)."""
    from ..text.embed import encode_cached

    sent = encode_cached(
        _encoder(cfg.text_model), list(captions), batch_size=batch_size, progress=progress
    )
    return caption_vectors_from_embeddings(sent, cfg)


def corpus_vectors(
    captions: Sequence[str],
    cfg: ZeroShotConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A caption corpus -> (texts, counts ``[U]``, vectors ``[U, cfg.dim]``) ready for the index.

    With ``cfg.dedupe`` identical captions (after :func:`normalize_caption`) are embedded and
    indexed once (AudioCaps train: 49,838 -> 45,677); ``counts`` says how many each stands for.
    """
    if cfg.dedupe:
        texts, counts, _ = dedupe_captions(captions)
    else:
        texts, counts = [c.strip() for c in captions], np.ones(len(captions), dtype=np.int64)
    return texts, counts, caption_vectors(texts, cfg, progress=progress)


def class_prior(caption_profiles_: np.ndarray) -> np.ndarray:
    """``[C]`` mean caption profile of a corpus: how often captions talk about each class."""
    return caption_profiles_.mean(axis=0)


def pool_scores(scores: np.ndarray, cfg: ZeroShotConfig) -> np.ndarray:
    """``[N, C]`` or ``[N, T, C]`` class scores -> ``[N, C]`` clip scores (mean or max over T)."""
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim == 3:
        s = s.mean(axis=1) if cfg.pool == "mean" else s.max(axis=1)
    if s.ndim != 2 or s.shape[1] != cfg.num_classes:
        raise ConfigMismatchError(
            f"class scores must be [N, {cfg.num_classes}] or [N, T, {cfg.num_classes}], got {list(np.shape(scores))}"
        )
    return s


def audio_vectors(
    scores: np.ndarray, cfg: ZeroShotConfig, prior: np.ndarray | None = None
) -> np.ndarray:
    """YAMNet class scores ``[N, C]`` or ``[N, T, C]`` -> shared-space vectors ``[N, cfg.dim]``.

    ``prior`` ``[C]`` (see :func:`class_prior`) is only used by the profile part when
    ``cfg.prior_power > 0``.
    """
    s = pool_scores(scores, cfg) * class_mask(cfg)  # [N, C], generic classes zeroed
    profile = sent = None
    if cfg.variant != "sentence":
        profile = s
        if cfg.prior_power > 0 and prior is not None:
            profile = s / np.maximum(prior, 1e-6) ** cfg.prior_power
    if cfg.variant != "profile":
        w = s**cfg.score_power
        if 0 < cfg.top_k < w.shape[1]:
            kth = np.partition(w, -cfg.top_k, axis=1)[:, -cfg.top_k][:, None]
            w = np.where(w >= kth, w, 0.0)
        sent = w @ class_name_vectors(cfg)  # [N, E]
    return _combine(profile, sent, cfg)


# ---------------------------------------------------------------- corpus


def normalize_caption(text: str) -> str:
    """Key under which captions count as identical: lower case, words only, single spaces."""
    return " ".join(words(text))


def dedupe_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(unique texts in first-seen order, their counts ``[U]``, index of each input ``[N]``).

    The representative text of a group is its first occurrence (stripped), so no caption is
    invented; counts let a caller weight frequent captions.
    """
    keys = [normalize_caption(c) for c in captions]
    first: dict[str, int] = {}
    inverse = np.empty(len(keys), dtype=np.int64)
    texts: list[str] = []
    for i, k in enumerate(keys):
        j = first.get(k)
        if j is None:
            j = first[k] = len(texts)
            texts.append(captions[i].strip())
        inverse[i] = j
    counts = np.bincount(inverse, minlength=len(texts)) if len(keys) else np.zeros(0, np.int64)
    return texts, counts, inverse
