"""Named models: the default captioner shipped inside the package, and model resolution.

``-m/--model`` takes a model directory or a name. Resolution order: ``-m`` (an existing
directory, else a name), then ``$AUDIOCAP_MODEL`` (the same), then the default,
:data:`DEFAULT_MODEL`.

A shipped model is a folder of package data under ``audiocap_cli/data/models/<name>/`` holding
only what was trained or cannot be derived: ``model.json`` (the ModelConfig, what it was
trained on, its validation scores), ``corpus.tsv.gz`` (its caption corpus with each caption's
label classes as indexed, i.e. closed under the ontology when ``LabelSpaceConfig.ancestors``),
``labelspace.json`` and the decoder's trainable weights (``decoder/``, float16).
Its index is derived: built on first use, atomically, into ``$AUDIOCAP_CACHE/models/<name>-<hash>/``,
whose decoder folder links back to the package's files (no weight file is written twice).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelNotFoundError, UsageError

DEFAULT_MODEL = "audiocaps-labels"
MODEL_ENV = "AUDIOCAP_MODEL"
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "data" / "models"
MODEL_INFO = "model.json"
CORPUS_NAME = "corpus.tsv.gz"
Progress = Callable[[str, int], Callable[[int], None]]  # (name, total) -> advance(n)


class ModelSpecError(ModelNotFoundError, UsageError):
    """``-m`` or ``$AUDIOCAP_MODEL`` names no model (an unknown name, a missing path, a file, a
    folder without config.json): still a ModelNotFoundError for library callers, and a usage
    error (exit status 2) on the command line."""


@dataclass(frozen=True)
class ModelInfo:
    """One installed model, as ``audiocap models`` lists it."""

    name: str
    path: Path  # where its files are (the package folder for a shipped model)
    size_bytes: int
    trained_on: str
    validation: dict[str, Any]
    shipped: bool


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def shipped_models() -> list[ModelInfo]:
    """The models inside the package."""
    out = []
    for folder in sorted(SHIPPED_ROOT.glob(f"*/{MODEL_INFO}")):
        info = json.loads(folder.read_text())
        out.append(
            ModelInfo(
                folder.parent.name,
                folder.parent,
                _size(folder.parent),
                info.get("trained_on", ""),
                info.get("validation", {}),
                True,
            )
        )
    return out


def list_models() -> list[ModelInfo]:
    """Every named model: the shipped ones (more places may come: a user model registry)."""
    return shipped_models()


def resolve(
    model: str | Path | None,
    env: dict[str, str] | None = None,
    say: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    check: bool = False,
) -> Path:
    """The model directory to use: ``model`` (a directory, or a name), else $AUDIOCAP_MODEL,
    else the default model. A name is materialised into the cache on first use. With ``check``
    a folder must hold a model's config.json (the CLI checks before loading anything)."""
    from .modeldir import CONFIG_NAME

    env = dict(os.environ) if env is None else env
    given = model is not None and str(model) != ""
    spec = str(model) if given else env.get(MODEL_ENV) or DEFAULT_MODEL
    where = "" if given or not env.get(MODEL_ENV) else f"${MODEL_ENV}: "  # say where it came from
    path = Path(spec).expanduser()
    if path.is_dir():
        if check and not (path / CONFIG_NAME).is_file():
            raise ModelSpecError(
                f"{where}{spec}: not a model directory (no {CONFIG_NAME}); build one with "
                "`audiocap train-retriever`, `audiocap build-index` or `audiocap bootstrap`"
            )
        return path
    names = {m.name: m for m in shipped_models()}
    if spec in names:
        return materialise(names[spec].path, say, progress)
    if path.exists():
        raise ModelSpecError(f"{where}{spec}: not a model directory (a file)")
    if os.sep in spec or spec.startswith("."):
        raise ModelSpecError(f"{where}{spec}: no such model directory")
    known = ", ".join(sorted(names)) or "none installed"
    raise ModelSpecError(
        f"{where}no model named {spec!r} (known: {known}); give a model directory or a name from `audiocap models`"
    )


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:12]


def read_corpus(folder: Path) -> tuple[list[str], np.ndarray]:
    """A shipped corpus: captions and their multi-hot labels ``[N, C]`` (C from labelspace.json)."""
    from ..config import load_config
    from ..retrieval.labelspace import CONFIG_NAME, LabelSpaceConfig

    cfg = load_config(LabelSpaceConfig, folder / CONFIG_NAME)
    captions: list[str] = []
    rows: list[int] = []
    cols: list[str] = []
    with gzip.open(folder / CORPUS_NAME, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            cap, _, classes = line.rstrip("\n").partition("\t")
            captions.append(cap)
            split = classes.split()
            rows.extend([i] * len(split))
            cols.extend(split)
    labels = np.zeros((len(captions), cfg.num_classes), dtype=np.float32)
    labels[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1.0
    return captions, labels


def write_corpus(folder: Path, captions: list[str], labels: np.ndarray) -> None:
    """The inverse of :func:`read_corpus` (deterministic bytes: gzip mtime 0)."""
    lines = [
        f"{c}\t{' '.join(str(j) for j in np.flatnonzero(row))}\n"
        for c, row in zip(captions, labels)
    ]
    with (
        open(folder / CORPUS_NAME, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f,
    ):
        f.write("".join(lines).encode("utf-8"))


def materialise(
    folder: Path, say: Callable[[str], None] | None = None, progress: Progress | None = None
) -> Path:
    """The runnable model directory of a shipped model, built into the cache once."""
    from ..resources import cache_dir

    target = cache_dir() / "models" / f"{folder.name}-{_digest(folder)}"
    if (target / "config.json").is_file():
        return target
    if say is not None:
        say(f"first use of model {folder.name!r}: building its index into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _build(
            folder,
            tmp,
            progress("building the model's index", len(BUILD_STEPS))
            if progress
            else (lambda n: None),
        )
        try:
            os.rename(tmp, target)  # atomic; a concurrent first use may have won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


BUILD_STEPS = ("corpus", "label sets", "encoder", "index")


def _build(folder: Path, out: Path, advance: Callable[[int], None]) -> None:
    from ..audio.encoders import load_encoder
    from ..config import fingerprint, from_dict, load_config
    from ..retrieval import labelspace as ls
    from .modeldir import ModelConfig, ModelDir

    info = json.loads((folder / MODEL_INFO).read_text())
    mcfg = from_dict(ModelConfig, info["model"])
    lcfg = load_config(ls.LabelSpaceConfig, folder / ls.CONFIG_NAME)
    captions, labels = read_corpus(folder)
    advance(1)
    corpus = ls.LabelCorpus.build(labels, captions, lcfg)
    advance(1)
    encoder = load_encoder(mcfg.encoder, mcfg.encoder_weights)
    advance(1)
    index = ls.build_index(corpus, lcfg, fingerprint(encoder.config))
    advance(1)
    md = ModelDir(out)
    md.init(mcfg)
    index.save(md.index, extra=lambda f: ls.save_extras(f, lcfg, corpus.weights))
    src = ModelDir(folder)
    if src.has_decoder():  # a retrieval-only model has none
        dst = out / src.decoder.relative_to(folder)
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.decoder.iterdir():
            os.symlink(f.resolve(), dst / f.name)
