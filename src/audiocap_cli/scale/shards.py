"""Array-job sharding of ``audiocap caption`` inputs and the merge of the shards' outputs.

``--shard I/N`` keeps the inputs whose stable hash (SHA-256 of the path as given) falls in
shard I of N. A file's shard depends on its path alone, never on its position in the list, so N
tasks that expand the same directories cover every file exactly once even when each host lists
the directories in another order. Tasks must name files by the same paths (the same mount
point, or the same relative paths from the same working directory).

:func:`merge` concatenates shard outputs (JSONL) after checking that no record appears twice,
no line was cut short, and (given the expected inputs) no input is missing; :func:`merge_into`
writes the result to a file atomically. Memory stays bounded at millions of records: the check
keeps two 8-byte hashes per record in numpy arrays and nothing per expected input, which stream
past (:func:`iter_inputs`) and are looked up in the sorted record hashes.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, BinaryIO, TextIO

import numpy as np

from ..audio.io import AUDIO_EXTENSIONS
from ..errors import AudiocapError, UsageError
from ..locks import hold_output

# The bounded stdin reader and the audio-name test of expand_inputs, so that iter_inputs yields
# exactly what caption expands (tests/test_shards.py checks the two agree).
from ..pipeline.records import _looks_like_audio, _stdin_paths

SHOWN = 20  # examples of each kind of problem a report keeps (the counts are complete)
_CHUNK = 1 << 16  # records or paths hashed per numpy call


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) -> ``(I, N)``; raises AudiocapError on anything else."""
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise AudiocapError(f"--shard {spec!r}: expected I/N, e.g. 1/4") from None
    if n < 1 or not 1 <= i <= n:
        raise AudiocapError(f"--shard {spec!r}: need 1 <= I <= N")
    return i, n


def shard_of(path: str, n: int) -> int:
    """The 1-based shard of ``path`` among ``n``: the first 8 bytes of the SHA-256 digest of its
    UTF-8 bytes (surrogateescape), read as a big-endian unsigned integer, mod ``n``, plus 1."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(paths: Iterable[str], i: int, n: int) -> list[str]:
    """The paths of shard ``i`` of ``n``, in their given order."""
    return [p for p in paths if n == 1 or shard_of(p, n) == i]


def iter_inputs(inputs: Iterable[str], stdin: TextIO | None = None) -> Iterator[str]:
    """The paths ``pipeline.records.expand_inputs`` returns for ``inputs``, streamed: the same
    rules for files, directories, globs and ``-``, but neither sorted nor de-duplicated, so
    that memory does not grow with the number of paths (a directory's own listing aside)."""
    for item in inputs:
        if item == "-":
            if stdin is not None:
                yield from _stdin_paths(stdin)
        elif os.path.isdir(item):
            if _looks_like_audio(item):
                yield item
            unlisted: list[str] = []
            for root, dirs, files in os.walk(
                item, onerror=lambda e: unlisted.append(str(Path(os.fsdecode(e.filename))))
            ):
                yield from unlisted
                unlisted.clear()
                for name in files + dirs:
                    if name.lower().endswith(AUDIO_EXTENSIONS):
                        yield str(Path(root) / name)
            yield from unlisted
        elif not os.path.exists(item) and glob.has_magic(item):
            matched = False
            for p in glob.iglob(item, recursive=True):
                matched = True
                yield p
            if not matched:
                yield item
        else:
            yield item


@dataclass
class MergeReport:
    """What :func:`merge` found. ``ok`` when nothing is duplicated, cut short or missing.

    ``duplicates``, ``partial`` and ``missing`` hold the first :data:`SHOWN` examples, in file
    (or input) order; the ``n_*`` fields count them all."""

    records: int = 0
    files: int = 0  # distinct input paths seen
    errors: int = 0  # error records (files that could not be captioned)
    duplicates: list[str] = field(default_factory=list)  # "PATH" or "PATH@START"
    partial: list[str] = field(default_factory=list)  # "FILE:LINE" of cut-short or bad lines
    missing: list[str] = field(default_factory=list)
    n_duplicates: int = 0
    n_partial: int = 0
    n_missing: int = 0
    # bytes of each shard output that were checked: what merge copies (a file still growing
    # contributes only the checked part)
    checked: list[tuple[str, int, int, int]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.n_duplicates or self.n_partial or self.n_missing)

    def problems(self, limit: int = 5) -> list[str]:
        out = []
        for what, items, n in (
            ("duplicated record", self.duplicates, self.n_duplicates),
            ("cut-short or unparseable line", self.partial, self.n_partial),
            ("missing input", self.missing, self.n_missing),
        ):
            if n:
                shown = ", ".join(items[:limit]) + (
                    f", ... ({n - limit} more)" if n > limit else ""
                )
                out.append(f"{n} {what}{'s' if n > 1 else ''}: {shown}")
        return out


def _records(name: str, limit: int | None = None) -> Iterator[tuple[int, dict | None]]:
    """``(line number, record or None)`` of a shard output's lines, read as bytes; None for a
    line that is cut short (no final newline), not UTF-8 JSON, or not an object with a path.
    ``limit``: read only this many bytes (the part an earlier pass checked)."""
    with open(name, "rb") as f:
        src: Iterable[bytes] = f if limit is None else _prefix_lines(f, limit)
        for no, line in enumerate(src, 1):
            obj = None
            if line.endswith(b"\n"):
                try:
                    obj = json.loads(line)
                except ValueError:  # JSONDecodeError, UnicodeDecodeError
                    pass
            yield no, obj if isinstance(obj, dict) and "path" in obj else None


def _prefix_lines(f: BinaryIO, limit: int) -> Iterator[bytes]:
    """The lines of the first ``limit`` bytes of ``f`` (a longer last line is cut there)."""
    left = limit
    for line in f:
        if left <= 0:
            return
        if len(line) > left:
            line = line[:left]
        left -= len(line)
        yield line


def _start(obj: dict) -> str:
    """The window start as its JSON text would compare (0 and 0.0 are other starts)."""
    return repr(obj.get("start"))


def _shown(obj: dict) -> str:
    return f"{obj['path']}" + (f"@{obj['start']}" if obj.get("start") else "")


class _Hashes:
    """A growing int64 array built from Python ints, a chunk at a time."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.buf: list[int] = []

    def add(self, h: int) -> None:
        self.buf.append(h)
        if len(self.buf) >= _CHUNK:
            self.parts.append(np.array(self.buf, dtype=np.int64))
            self.buf = []

    def sorted(self) -> np.ndarray:
        """All hashes, sorted in place (the chunks are freed)."""
        self.parts.append(np.array(self.buf, dtype=np.int64))
        out = np.concatenate(self.parts)
        self.parts, self.buf = [], []
        out.sort()
        return out


def _unique(sorted_arr: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (``np.unique`` would sort a copy again)."""
    if not len(sorted_arr):
        return sorted_arr
    keep = np.empty(len(sorted_arr), dtype=bool)
    keep[0] = True
    np.not_equal(sorted_arr[1:], sorted_arr[:-1], out=keep[1:])
    return sorted_arr[keep]


def _member(sorted_arr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which ``values`` are in ``sorted_arr`` (a boolean mask)."""
    if not len(sorted_arr):
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_arr, values).clip(max=len(sorted_arr) - 1)
    return sorted_arr[pos] == values


def check(files: Sequence[str], expected: Iterable[str] | None = None) -> MergeReport:
    """Read the shard outputs and report duplicates, cut-short lines and missing inputs.

    Records and paths are compared by their 64-bit hashes (Python's ``hash`` of the string:
    SipHash, within this one process); duplicates found so are confirmed on the records
    themselves, so a hash collision can never fail a merge. (The converse, a collision that
    hides a missing input, has odds of about missing x records / 2**64: 5e-7 for a million
    missing among 10 M records.) ``expected`` is consumed once, as a stream. An expected path without a record of the same spelling still counts as present when
    a record names the same file another way (``d/../a.wav``, ``./a.wav``, its absolute path, a
    symlink): ``caption`` de-duplicates its inputs that way (``records.file_key``)."""
    rep = MergeReport()
    keys, paths = _Hashes(), _Hashes()
    for name in files:
        size = 0
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            for no, line in enumerate(f, 1):
                size += len(line)
                obj = None
                if line.endswith(b"\n"):
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        pass
                if not (isinstance(obj, dict) and "path" in obj):
                    rep.n_partial += 1
                    if len(rep.partial) < SHOWN:
                        rep.partial.append(f"{name}:{no}")
                    continue
                rep.records += 1
                path = str(obj["path"])
                paths.add(hash(path))
                keys.add(hash((path, _start(obj))))
                if "error" in obj:
                    rep.errors += 1
        rep.checked.append((name, st.st_dev, st.st_ino, size))
    key_arr = keys.sorted()
    dup = np.unique(key_arr[1:][key_arr[1:] == key_arr[:-1]])
    del key_arr
    if len(dup):
        _confirm_duplicates(rep, set(dup.tolist()))
    path_arr = _unique(paths.sorted())
    rep.files = len(path_arr)
    if expected is not None:
        _find_missing(rep, path_arr, expected)
    return rep


def _confirm_duplicates(rep: MergeReport, suspects: set[int]) -> None:
    """Count the records whose (path, start) really appeared before, among those whose hash
    did (a second pass that keeps only the suspects' keys)."""
    seen: set[tuple[str, str]] = set()
    for name, _dev, _ino, size in rep.checked:
        for _no, obj in _records(name, size):
            if obj is None:
                continue
            key = (str(obj["path"]), _start(obj))
            if hash(key) not in suspects:
                continue
            if key in seen:
                rep.n_duplicates += 1
                if len(rep.duplicates) < SHOWN:
                    rep.duplicates.append(_shown(obj))
            seen.add(key)


def _find_missing(rep: MergeReport, path_arr: np.ndarray, expected: Iterable[str]) -> None:
    """Expected paths without a record: looked up by hash a chunk at a time; those not found
    (normally none) go to a temporary file, then are looked up again by the file they name."""
    it = iter(expected)
    with tempfile.TemporaryFile() as spill:
        n_spilled = 0
        while chunk := list(itertools.islice(it, _CHUNK)):
            h = np.fromiter((hash(p) for p in chunk), dtype=np.int64, count=len(chunk))
            for i in np.flatnonzero(~_member(path_arr, h)):
                spill.write(chunk[int(i)].encode("utf-8", "surrogatepass") + b"\0")
                n_spilled += 1
        if not n_spilled:
            return
        spill.seek(0)
        file_key = FileKeys()
        want = np.fromiter(
            (hash(file_key(p)) for p in _read0(spill)), dtype=np.int64, count=n_spilled
        )
        targets = np.unique(want)
        covered = np.zeros(len(targets), dtype=bool)
        for batch in _batched(_record_paths(rep), _CHUNK):
            h = np.fromiter((hash(file_key(p)) for p in batch), dtype=np.int64, count=len(batch))
            pos = np.searchsorted(targets, h).clip(max=len(targets) - 1)
            covered[pos[targets[pos] == h]] = True
        gone = ~covered[np.searchsorted(targets, want)]
        rep.n_missing = int(gone.sum())
        spill.seek(0)
        for p, g in zip(_read0(spill), gone):
            if g:
                rep.missing.append(p)
                if len(rep.missing) >= SHOWN:
                    break


# The path of a record line as audiocap writes it (``{"path": "...", ...}``, the path free of
# escapes), read without parsing the rest of the line: the extra pass of a failing merge
# reads every record again, and parsing whole lines was most of its time.
_PATH_FIRST = re.compile(rb'\{"path": "([^"\\]*)"')


def _record_paths(rep: MergeReport) -> Iterator[str]:
    """The path of every record, in file order (lines the check found bad are left out)."""
    fast = rep.n_partial == 0  # every line is a record: no need to tell the bad ones apart
    for name, _dev, _ino, size in rep.checked:
        with open(name, "rb") as f:
            for line in _prefix_lines(f, size):
                m = _PATH_FIRST.match(line) if fast else None
                if m and line.count(b'"path"') == 1:  # a second "path" key would win in JSON
                    yield m.group(1).decode("utf-8")
                    continue
                try:
                    obj = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and "path" in obj:
                    yield str(obj["path"])


def _batched(it: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _read0(f: IO[bytes]) -> Iterator[str]:
    """The NUL-terminated paths of a spill file (paths hold no NUL; they may hold newlines)."""
    rest = b""
    while block := f.read(1 << 20):
        parts = (rest + block).split(b"\0")
        rest = parts.pop()
        for p in parts:
            yield p.decode("utf-8", "surrogatepass")


class FileKeys:
    """``os.path.realpath(path)`` (``records.file_key``, the key caption de-duplicates inputs
    by) with the directories cached: one ``lstat`` per file instead of one per path component.
    One instance per merge (relative paths resolve against the working directory of then)."""

    def __init__(self) -> None:
        self._real_dir = lru_cache(maxsize=1 << 16)(os.path.realpath)

    def __call__(self, path: str) -> str:
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        resolved = os.path.join(self._real_dir(head), tail)
        return os.path.realpath(resolved) if os.path.islink(resolved) else resolved


def _copy_checked(rep: MergeReport, out: BinaryIO) -> None:
    """Copy the checked bytes of every shard output to ``out``, in file order."""
    for name, dev, ino, size in rep.checked:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size < size:
                raise AudiocapError(f"{name}: replaced or cut while merging; nothing written")
            left = size
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    raise AudiocapError(f"{name}: cut while merging; nothing written")
                out.write(block)
                left -= len(block)


def merge(
    files: Sequence[str], out: BinaryIO, expected: Iterable[str] | None = None
) -> MergeReport:
    """Check the shard outputs (see :func:`check`); when all is well, write their records to
    the binary stream ``out`` in file order, byte for byte. Nothing is written when a problem
    is found."""
    rep = check(files, expected)
    if rep.ok:
        _copy_checked(rep, out)
        out.flush()
    return rep


def merge_into(
    files: Sequence[str], dest: str | Path, expected: Iterable[str] | None = None
) -> MergeReport:
    """:func:`merge` into the file ``dest``, atomically: the records go to a temporary file in
    ``dest``'s folder, which is flushed to disk and then renamed over ``dest``. A merge that
    finds a problem, fails or is killed leaves an existing ``dest`` as it was. A symlink
    ``dest`` is followed; a new file gets the mode the shell's ``>`` would give it, and an
    existing one keeps its mode. OSErrors of the output are UsageErrors (exit status 2)."""
    dest = Path(dest)
    if dest.is_symlink():
        dest = Path(os.path.realpath(dest))
    if dest.is_dir():
        raise UsageError(f"-o {dest}: is a directory")
    if not dest.parent.is_dir():
        raise UsageError(f"-o {dest}: no such directory: {dest.parent}")
    with hold_output(dest):  # one writer per output file, as for `caption -o`
        return _merge_into(files, dest, expected)


def _merge_into(files: Sequence[str], dest: Path, expected: Iterable[str] | None) -> MergeReport:
    rep = check(files, expected)
    if not rep.ok:
        return rep
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise UsageError(f"-o {dest}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _copy_checked(rep, f)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, _mode(dest))
        os.replace(tmp, dest)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UsageError(f"-o {dest}: cannot write: {e.strerror or e}") from None
        raise
    _fsync_dir(dest.parent)
    return rep


def _mode(dest: Path) -> int:
    try:
        return stat.S_IMODE(dest.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse a directory fd)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
