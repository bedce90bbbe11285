"""Dataset manifests: the caption layouts users already have, read as they are.

Touches no audio samples (only file names). Three manifest layouts, detected from the header:

* AudioCaps CSV  ``audiocap_id,youtube_id,start_time,caption``: one caption per row; rows of
  the same ``youtube_id`` + ``start_time`` are one clip (val/test have 5 rows per clip, each with
  its own ``audiocap_id``). Clip id ``"{youtube_id}_{start_time}"``.
* Clotho CSV     ``file_name,caption_1..caption_5``: one row per file. Clip id = ``file_name``.
* generic CSV/TSV/JSONL ``path`` + ``caption`` (one per row; rows sharing an id are merged) or
  ``captions`` (a JSON list); ``id``, ``split`` and ``mids`` (or ``labels``: the clip's AudioSet
  classes, mids or display names, training data for label-grounded models) optional. Clip id =
  ``id`` or ``path``.

A dataset is a directory holding one manifest per split (or a single manifest file); see
docs/datasets.md for where manifests and audio are looked up. Every problem found (missing
audio, empty captions, duplicate ids, missing columns, unknown split...) is collected and
raised together as one :class:`~audiocap_cli.errors.DatasetError`.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audio.io import AUDIO_EXTENSIONS
from .errors import DatasetError

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Names the split's manifest / audio folder may carry: Clotho calls them development /
# validation / evaluation, aac-datasets and AudioCaps call them train / val / test.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "development", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "evaluation", "eval"),
}
MANIFEST_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl")

# Where AudioCaps download tools put a clip's audio (tried in this order, with any extension of
# AUDIO_EXTENSIONS when the pattern has none):
#   aac-datasets          AUDIOCAPS/audio_32000Hz/<split>/{youtube_id}_{start_time}.flac
#   audiocaps-download    <split>/{audiocap_id}.ogg  (one file per caption row)
#   AudioSet conventions  Y{youtube_id}_{start:.3f}_{end:.3f}.wav, Y{youtube_id}.wav
AUDIOCAPS_PATTERNS: tuple[str, ...] = (
    "{youtube_id}_{start_time}",
    "{audiocap_id}",
    "Y{youtube_id}_{start_time:.3f}_{end_time:.3f}",
    "Y{youtube_id}_{start_time}",
    "Y{youtube_id}",
    "{youtube_id}",
)
# AudioCaps clips are 10 s cut from start_time (end_time is only used in file-name patterns).
AUDIOCAPS_CLIP_SECONDS = 10

_AUDIOCAPS_COLUMNS = ("youtube_id", "start_time", "caption")
_GENERIC_LAYOUT = (
    "path,caption (one per row) or path,captions (JSON list); id, split and mids/labels optional"
)
_LABEL_COLUMNS = ("mids", "labels")  # a generic manifest's AudioSet classes of the clip
_LAYOUTS = (
    "AudioCaps (audiocap_id,youtube_id,start_time,caption), "
    "Clotho (file_name,caption_1..caption_5) or generic (" + _GENERIC_LAYOUT + ")"
)


@dataclass(frozen=True)
class Clip:
    """One audio clip and its reference captions; ``path`` is None when no audio is known.
    ``mids``: AudioSet classes a generic manifest gives the clip (mids or display names)."""

    id: str
    path: Path | None
    captions: tuple[str, ...]
    mids: tuple[str, ...] = ()


# --------------------------------------------------------------------------- audio lookup


class _AudioFinder:
    """Finds a clip's audio among candidate directories; each directory is listed once."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = [d for d in dict.fromkeys(dirs) if d.is_dir()]
        self._names: list[dict[str, str]] | None = None
        self._stems: list[dict[str, str]] | None = None

    def _index(self) -> None:
        self._names, self._stems = [], []
        rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
        for d in self.dirs:
            names: dict[str, str] = {}
            stems: dict[str, str] = {}
            with os.scandir(d) as it:
                for entry in it:
                    names[entry.name] = entry.name
                    stem, ext = os.path.splitext(entry.name)
                    r = rank.get(ext.lower())
                    if r is None:
                        continue
                    old = stems.get(stem)
                    # Same stem in several formats: prefer the earlier (lossless first) extension.
                    if old is None or r < rank[os.path.splitext(old)[1].lower()]:
                        stems[stem] = entry.name
            self._names.append(names)
            self._stems.append(stems)

    def find(self, names: Iterable[str]) -> Path | None:
        """First existing file among ``names`` (with or without an audio extension)."""
        if self._names is None:
            self._index()
        assert self._names is not None and self._stems is not None
        names = list(names)
        for d, listed, stems in zip(self.dirs, self._names, self._stems):
            for name in names:
                if "/" in name or os.sep in name:
                    p = d / name
                    if p.is_file():
                        return p
                    continue
                has_ext = os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS
                if has_ext and name in listed:
                    return d / name
                # A name without an extension, or with one the user converted away from
                # (Clotho's .wav re-encoded to .flac), matches any audio file with that stem.
                stem = os.path.splitext(name)[0] if has_ext else name
                hit = stems.get(stem)
                if hit is not None:
                    return d / hit
        return None


def _audio_dirs(root: Path, split: str | None) -> list[Path]:
    """Candidate audio directories under ``root``, most specific first."""
    out: list[Path] = []
    for alias in SPLIT_ALIASES.get(split or "", ()):
        out += [root / "audio" / alias, root / alias, root / "clotho_audio_files" / alias]
        out += sorted(root.glob(f"audio_*/{alias}"))  # aac-datasets: audio_32000Hz/<split>
    out += [root / "audio", root]
    return out


# --------------------------------------------------------------------------- reading rows


def _sniff_delimiter(first_line: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    return "\t" if first_line.count("\t") > first_line.count(",") else ","


def _read_rows(
    path: Path, problems: list[str]
) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(header, [(line number, row dict)]) of a CSV/TSV or JSONL manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets prepend a BOM
    except UnicodeDecodeError as e:
        problems.append(f"not UTF-8 text ({e.reason} at byte {e.start})")
        return [], []
    except OSError as e:
        problems.append(f"cannot read ({e.strerror or e})")
        return [], []
    if path.suffix.lower() == ".jsonl" or text.lstrip().startswith("{"):
        header: dict[str, None] = {}
        rows: list[tuple[int, dict[str, Any]]] = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"line {no}: invalid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {no}: expected a JSON object, got {type(obj).__name__}")
                continue
            header.update(dict.fromkeys(obj))
            rows.append((no, obj))
        return list(header), rows
    first = text.split("\n", 1)[0]
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first, path.suffix.lower())
    )
    try:
        header_row = next(reader)
    except StopIteration:
        return [], []
    header_row = [h.strip() for h in header_row]
    width = len(header_row)
    rows = []
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            no = reader.line_num
            if len(rec) != width:
                problems.append(f"line {no}: {len(rec)} fields, header has {width}")
                continue
            rows.append((no, dict(zip(header_row, rec))))
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: malformed CSV ({e})")
    return header_row, rows


def _detect(header: Sequence[str]) -> str | None:
    cols = set(header)
    if "youtube_id" in cols:
        return "audiocaps"
    if "file_name" in cols or any(c.startswith("caption_") for c in cols):
        return "clotho"
    if cols & {"path", "caption", "captions"}:
        return "generic"
    return None


def _string_list(value: Any, column: str, where: str, problems: list[str]) -> list[str]:
    """A generic list cell (``captions``, ``mids``): a list (JSONL) or a JSON list string (CSV)
    or one string."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            problems.append(f"{where}: {column} is not a valid JSON list")
            return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    problems.append(f"{where}: {column} must be a list of strings")
    return []


def _clean(caps: Iterable[Any], where: str, problems: list[str]) -> list[str]:
    out = []
    for c in caps:
        c = "" if c is None else str(c).strip()
        if not c:
            problems.append(f"{where}: empty caption")
        else:
            out.append(c)
    return out


class _Group:
    """Rows gathered into one clip: its captions and the audio names to look for."""

    __slots__ = ("captions", "mids", "names", "path", "where")

    def __init__(self, where: str, path: str | None) -> None:
        self.captions: list[str] = []
        self.mids: list[str] = []
        self.names: list[str] = []
        self.path = path
        self.where = where


def _number(text: str) -> int | float | str:
    try:
        f = float(text)
    except ValueError:
        return text
    return int(f) if f.is_integer() else f


def _parse(
    header: Sequence[str],
    rows: list[tuple[int, dict[str, Any]]],
    kind: str,
    *,
    patterns: Sequence[str],
    split: str | None,
    text_only: bool,
    user_pattern: bool,
    problems: list[str],
) -> dict[str, _Group]:
    """Rows to clip groups keyed by clip id, in first-seen order."""
    if kind == "audiocaps":
        return _parse_audiocaps(header, rows, patterns, text_only, user_pattern, problems)
    if kind == "clotho":
        return _parse_clotho(header, rows, problems)
    return _parse_generic(header, rows, split, text_only, problems)


def _parse_audiocaps(
    header: Sequence[str],
    rows: list[tuple[int, dict[str, Any]]],
    patterns: Sequence[str],
    text_only: bool,
    user_pattern: bool,
    problems: list[str],
) -> dict[str, _Group]:
    """AudioCaps: one caption per row, clips keyed ``<youtube_id>_<start_time>``; audio names
    from ``patterns`` formatted with the row's columns."""
    groups: dict[str, _Group] = {}
    missing = [c for c in _AUDIOCAPS_COLUMNS if c not in set(header)]
    if missing:
        problems.append("missing column(s) " + ", ".join(missing) + " for AudioCaps layout")
        return groups
    bad_pattern: dict[str, str] = {}
    for no, row in rows:
        where = f"line {no}"
        yt, start = str(row["youtube_id"]).strip(), str(row["start_time"]).strip()
        if not yt or not start:
            problems.append(f"{where}: empty youtube_id or start_time")
            continue
        cid = f"{yt}_{start}"
        g = groups.get(cid)
        if g is None:
            g = groups[cid] = _Group(where, None)
        cap = str(row["caption"] or "").strip()
        if cap:
            g.captions.append(cap)
        else:
            problems.append(f"{where}: empty caption")
        if not text_only:
            g.names += _audiocaps_names(row, yt, start, patterns, bad_pattern)
    if (
        user_pattern
        and len(bad_pattern) == len(patterns)
        and all(not g.names for g in groups.values())
    ):
        pat, err = next(iter(bad_pattern.items()))
        problems.append(f"pattern {pat!r} does not fit the columns {', '.join(header)} ({err})")
    return groups


def _audiocaps_names(
    row: dict[str, Any], yt: str, start: str, patterns: Sequence[str], bad_pattern: dict[str, str]
) -> list[str]:
    """The audio file names ``patterns`` give for one AudioCaps row; a pattern that does not
    fit is noted in ``bad_pattern`` (a default pattern may need a column or number this file
    lacks; a user's pattern that never fits is reported once, by the caller)."""
    s = _number(start)
    fields = {
        **row,
        "youtube_id": yt,
        "start_time": s,
        "end_time": s + AUDIOCAPS_CLIP_SECONDS if not isinstance(s, str) else s,
    }
    names = []
    for pat in patterns:
        try:
            names.append(pat.format(**fields))
        except (KeyError, ValueError, IndexError, AttributeError) as e:
            bad_pattern.setdefault(pat, f"{type(e).__name__}: {e}")
    return names


def _parse_clotho(
    header: Sequence[str], rows: list[tuple[int, dict[str, Any]]], problems: list[str]
) -> dict[str, _Group]:
    """Clotho: one clip per row, ``file_name`` and ``caption_1..caption_N``."""
    groups: dict[str, _Group] = {}
    cap_cols = sorted((c for c in header if c.startswith("caption_")), key=lambda c: (len(c), c))
    missing = [c for c in ("file_name",) if c not in set(header)] + (
        [] if cap_cols else ["caption_1"]
    )
    if missing:
        problems.append("missing column(s) " + ", ".join(missing) + " for Clotho layout")
        return groups
    for no, row in rows:
        where = f"line {no}"
        name = str(row["file_name"]).strip()
        if not name:
            problems.append(f"{where}: empty file_name")
            continue
        if name in groups:
            problems.append(
                f"{where}: duplicate file_name {name!r} (first at {groups[name].where})"
            )
            continue
        g = groups[name] = _Group(where, None)
        g.captions = _clean((row.get(c) for c in cap_cols), where, problems)
        g.names = [name]
    return groups


def _parse_generic(
    header: Sequence[str],
    rows: list[tuple[int, dict[str, Any]]],
    split: str | None,
    text_only: bool,
    problems: list[str],
) -> dict[str, _Group]:
    """Generic CSV/JSONL: ``path`` with ``caption`` (a row each) or ``captions`` (a list); ``id``
    and ``split`` optional (rows of other splits are skipped)."""
    cols = set(header)
    groups: dict[str, _Group] = {}
    has_cap = "caption" in cols or "captions" in cols
    missing = ([] if text_only or "path" in cols else ["path"]) + (
        [] if has_cap else ["caption or captions"]
    )
    if missing:
        problems.append(
            "missing column(s) " + ", ".join(missing) + f" for generic layout ({_GENERIC_LAYOUT})"
        )
        return groups
    use_split = split is not None and "split" in cols
    for no, row in rows:
        where = f"line {no}"
        if use_split and not _in_split(row, split, where, problems):
            continue
        path = row.get("path")
        path = None if path is None else str(path).strip()
        if not path and not text_only:
            problems.append(f"{where}: empty path")
            continue
        cid = str(row.get("id") or "").strip() or path or f"line{no}"
        caps = _row_captions(row, where, problems)
        g = groups.get(cid)
        if g is None:
            g = groups[cid] = _Group(where, path)
        elif g.path != path:
            problems.append(
                f"{where}: duplicate id {cid!r} with a different path (first at {g.where})"
            )
            continue
        g.captions += _clean(caps, where, problems)
        for m in _row_mids(row, where, problems):
            if m not in g.mids:
                g.mids.append(m)
        if path:
            g.names = [path]
    return groups


def _row_mids(row: dict[str, Any], where: str, problems: list[str]) -> list[str]:
    """A generic row's AudioSet classes: a JSON list, or text separated by ``;`` or ``|`` (or by
    commas when every part is a mid, as in AudioSet's own CSVs: ``"/m/09x0r,/m/05zppz"``)."""
    value = next((row[c] for c in _LABEL_COLUMNS if row.get(c) not in (None, "")), None)
    if value is None:
        return []
    if isinstance(value, str) and not value.lstrip().startswith("["):
        parts = re.split(r"[;|]", value) if re.search(r"[;|]", value) else [value]
        if len(parts) == 1 and all(p.strip().startswith("/") for p in value.split(",")):
            parts = value.split(",")
    else:
        parts = _string_list(value, "mids", where, problems)
    return [p.strip() for p in parts if p.strip()]


def _in_split(row: dict[str, Any], split: str | None, where: str, problems: list[str]) -> bool:
    """Whether a generic row's ``split`` is ``split`` (an unknown split is a problem)."""
    row_split = _canonical_split(str(row.get("split", "")).strip())
    if row_split is None:
        problems.append(
            f"{where}: unknown split {row.get('split')!r} (expected {', '.join(SPLITS)})"
        )
        return False
    return row_split == split


def _row_captions(row: dict[str, Any], where: str, problems: list[str]) -> list[Any]:
    """A generic row's captions: its ``captions`` list, then its ``caption``."""
    caps: list[Any] = []
    if row.get("captions") not in (None, ""):
        caps += _string_list(row["captions"], "captions", where, problems)
    if "caption" in row:
        caps.append(row["caption"])
    elif not caps:
        problems.append(f"{where}: no caption")
    return caps


def _canonical_split(split: str) -> str | None:
    s = split.strip().lower()
    for canon, aliases in SPLIT_ALIASES.items():
        if s in aliases:
            return canon
    return None


def _resolve(
    groups: dict[str, _Group],
    finder: _AudioFinder | None,
    require_audio: bool,
    problems: list[str],
) -> list[Clip]:
    clips: list[Clip] = []
    missing: list[str] = []
    for cid, g in groups.items():
        path: Path | None = None
        if finder is not None:
            absolute = [n for n in g.names if os.path.isabs(n)]
            if absolute:
                p = Path(absolute[0])
                path = p if p.is_file() else None
            else:
                path = finder.find(g.names)
            if path is None and require_audio:
                missing.append(
                    f"{g.where}: no audio for {cid!r}" + (f" ({g.names[0]})" if g.names else "")
                )
        if not g.captions:
            problems.append(f"{g.where}: clip {cid!r} has no caption")
        clips.append(Clip(cid, path, tuple(g.captions), tuple(g.mids)))
    if missing and finder is not None:
        where = ", ".join(str(d) for d in finder.dirs) or "(no audio directory exists)"
        problems.append(f"{len(missing)} clip(s) without audio, searched {where}")
        problems += missing
    return clips


def _read(path: Path, **kw: Any) -> list[Clip]:
    # Parsing allocates ~10 objects per row and none of them form cycles; the cyclic GC would
    # rescan them all repeatedly (half the time on AudioCaps train's 49,838 rows).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_unpaused(path, **kw)
    finally:
        if was_enabled:
            gc.enable()


def _read_unpaused(
    path: Path,
    *,
    audio_dirs: Sequence[Path] | None,
    require_audio: bool,
    pattern: str | None,
    split: str | None,
    source: Path | None = None,
) -> list[Clip]:
    problems: list[str] = []
    src = source or path
    if not path.is_file():
        raise DatasetError(
            src, [f"manifest {path} not found" if not path.exists() else f"{path} is not a file"]
        )
    header, rows = _read_rows(path, problems)
    kind = _detect(header)
    if kind is None:
        problems.insert(
            0, f"unrecognised header {','.join(header) or '(empty file)'}: expected {_LAYOUTS}"
        )
        raise DatasetError(src, problems)
    text_only = audio_dirs is None
    patterns: Sequence[str] = (pattern,) if pattern else AUDIOCAPS_PATTERNS
    groups = _parse(
        header,
        rows,
        kind,
        patterns=patterns,
        split=split,
        text_only=text_only,
        user_pattern=bool(pattern),
        problems=problems,
    )
    finder = None if text_only else _AudioFinder(audio_dirs or [])
    clips = _resolve(groups, finder, require_audio, problems)
    if not clips and not problems:
        problems.append("no clips" + (f" for split {split!r}" if split else ""))
    if problems:
        raise DatasetError(src, problems)
    return clips


# --------------------------------------------------------------------------- public API


def read_manifest(
    path: str | Path,
    audio_dir: str | Path | None = None,
    require_audio: bool = True,
    pattern: str | None = None,
) -> list[Clip]:
    """Clips of one manifest file (layout detected from its header).

    Audio is looked up in ``audio_dir`` if given, else next to the manifest (``audio/`` and the
    manifest's own directory). ``pattern`` overrides the AudioCaps file-name patterns (a
    ``str.format`` template over the CSV columns plus ``end_time``; no extension = any audio
    extension). With ``require_audio=False`` clips without audio get ``path=None`` instead of
    being reported.
    """
    p = Path(path)
    base = Path(audio_dir) if audio_dir is not None else p.parent
    dirs = [base, base / "audio"] if audio_dir is not None else _audio_dirs(p.parent, None)
    return _read(p, audio_dirs=dirs, require_audio=require_audio, pattern=pattern, split=None)


def read_captions(path: str | Path) -> list[Clip]:
    """Captions only (every ``Clip.path`` is None): for text-only work such as the caption index
    bootstrap. Audio columns are not required (a generic manifest may have only ``caption``)."""
    return _read(Path(path), audio_dirs=None, require_audio=False, pattern=None, split=None)


def _has_captions(path: Path) -> bool:
    """Whether a file's header (first line, or first JSON object) names a caption column."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    if first.lstrip().startswith("{"):
        try:
            keys = list(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            return True  # let the reader report the broken line
    else:
        delim = _sniff_delimiter(first, path.suffix.lower())
        keys = [k.strip() for k in next(csv.reader([first], delimiter=delim), [])]
    return any(k in ("caption", "captions") or k.startswith("caption_") for k in keys)


def find_manifest(dataset: str | Path, split: str) -> Path:
    """The manifest file of ``split`` in a dataset directory (see docs/datasets.md)."""
    root = Path(dataset)
    canon = _canonical_split(split)
    if canon is None:
        raise DatasetError(root, [f"unknown split {split!r}: expected {', '.join(SPLITS)}"])
    if not root.is_dir():
        raise DatasetError(
            root, ["dataset directory not found" if not root.exists() else "not a directory"]
        )
    found: dict[Path, None] = {}
    tried: list[str] = []
    for folder in (root, root / "clotho_csv_files"):
        for alias in SPLIT_ALIASES[canon]:
            for ext in MANIFEST_EXTENSIONS:
                if folder == root:
                    tried.append(alias + ext)
                exact = folder / f"{alias}{ext}"
                if exact.is_file():
                    found[exact] = None
                for p in sorted(folder.glob(f"*_{alias}{ext}")):
                    # Prefixed names only count with a caption column: Clotho ships
                    # clotho_metadata_<split>.csv beside clotho_captions_<split>.csv.
                    if p.is_file() and _has_captions(p):
                        found[p] = None
    if not found:
        raise DatasetError(
            root, [f"no manifest for split {canon!r}: looked for {', '.join(tried)} (or *_<name>)"]
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(root, [f"several manifests for split {canon!r}: {names}; keep one"])
    return next(iter(found))


def load_split(
    dataset: str | Path,
    split: str,
    audio_dir: str | Path | None = None,
    require_audio: bool = True,
    pattern: str | None = None,
) -> list[Clip]:
    """Clips of ``split`` (train/val/test, or Clotho's development/validation/evaluation).

    ``dataset`` is a directory holding one manifest per split, or a single manifest file (with
    a ``split`` column the rows are filtered; without one, the whole file is the split). Audio
    is looked up under ``audio_dir`` (and ``audio_dir/<split>``) if given, else under
    ``audio/<split>/``, ``<split>/``, ``audio/`` and the dataset directory itself.
    """
    root = Path(dataset)
    canon = _canonical_split(split)
    if canon is None:
        raise DatasetError(root, [f"unknown split {split!r}: expected {', '.join(SPLITS)}"])
    if root.is_file():
        manifest, base = root, root.parent
    else:
        manifest, base = find_manifest(root, canon), root
    if audio_dir is not None:
        ad = Path(audio_dir)
        dirs = [ad] + [ad / a for a in SPLIT_ALIASES[canon]] + [ad / "audio"]
    else:
        dirs = _audio_dirs(base, canon)
    return _read(
        manifest, audio_dirs=dirs, require_audio=require_audio, pattern=pattern, split=canon
    )


def validate(clips: Sequence[Clip], source: str | Path, require_audio: bool = True) -> None:
    """Raise one DatasetError listing every problem of ``clips``: duplicate ids, clips without
    captions or with empty ones, and (if ``require_audio``) missing or unreadable paths."""
    problems: list[str] = []
    seen: set[str] = set()
    for c in clips:
        if c.id in seen:
            problems.append(f"duplicate id {c.id!r}")
        seen.add(c.id)
        if not c.captions:
            problems.append(f"clip {c.id!r} has no caption")
        elif any(not s.strip() for s in c.captions):
            problems.append(f"clip {c.id!r} has an empty caption")
        if require_audio and (c.path is None or not Path(c.path).is_file()):
            problems.append(
                f"clip {c.id!r}: audio {'unknown' if c.path is None else str(c.path) + ' not found'}"
            )
    if problems:
        raise DatasetError(source, problems)
