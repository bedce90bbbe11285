"""Array-job sharding of ``audiocap caption`` inputs and the merge of the shards' outputs.

``--shard I/N`` keeps the inputs whose stable hash (SHA-256 of the path as given) falls in
shard I of N. A file's shard depends on its path alone, never on its position in the list, so N
tasks that expand the same directories cover every file exactly once even when each host lists
the directories in another order. Tasks must name files by the same paths (the same mount
point, or the same relative paths from the same working directory).

:func:`merge` concatenates shard outputs (JSONL) after checking that no record appears twice,
no line was cut short, and (given the expected inputs) no input is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ..errors import AudiocapError


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


@dataclass
class MergeReport:
    """What :func:`merge` found. ``ok`` when nothing is duplicated, cut short or missing."""

    records: int = 0
    files: int = 0  # distinct input paths seen
    errors: int = 0  # error records (files that could not be captioned)
    duplicates: list[str] = field(default_factory=list)
    partial: list[str] = field(
        default_factory=list
    )  # "FILE:LINE" of cut-short or unparseable lines
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.partial or self.missing)

    def problems(self, limit: int = 5) -> list[str]:
        out = []
        for what, items in (
            ("duplicated record", self.duplicates),
            ("cut-short or unparseable line", self.partial),
            ("missing input", self.missing),
        ):
            if items:
                shown = ", ".join(items[:limit]) + (
                    f", ... ({len(items) - limit} more)" if len(items) > limit else ""
                )
                out.append(f"{len(items)} {what}{'s' if len(items) > 1 else ''}: {shown}")
        return out


def _lines(path: str) -> Iterator[tuple[int, str, dict | None]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            obj = None
            if line.endswith("\n"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    pass
            yield no, line, obj if isinstance(obj, dict) and "path" in obj else None


def _key(obj: dict) -> bytes:
    """Identity of one record: its path and window start (16-byte digest: memory stays ~100 B
    per record at millions of records)."""
    raw = json.dumps([obj["path"], obj.get("start")]).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=16).digest()


def check(files: Sequence[str], expected: Sequence[str] | None = None) -> MergeReport:
    """Read the shard outputs once and report duplicates, cut-short lines and missing inputs."""
    rep = MergeReport()
    seen: set[bytes] = set()
    paths: set[str] = set()
    for name in files:
        for no, _line, obj in _lines(name):
            if obj is None:
                rep.partial.append(f"{name}:{no}")
                continue
            rep.records += 1
            k = _key(obj)
            if k in seen:
                rep.duplicates.append(
                    f"{obj['path']}" + (f"@{obj['start']}" if obj.get("start") else "")
                )
            seen.add(k)
            if "error" in obj:
                rep.errors += 1
            paths.add(str(obj["path"]))
    rep.files = len(paths)
    if expected is not None:
        rep.missing = [p for p in expected if p not in paths]
    return rep


def merge(files: Sequence[str], out: TextIO, expected: Sequence[str] | None = None) -> MergeReport:
    """Check the shard outputs (see :func:`check`); when all is well, write their records to
    ``out`` in file order. Nothing is written when a problem is found."""
    rep = check(files, expected)
    if rep.ok:
        for name in files:
            for _no, line, obj in _lines(name):
                if obj is not None:
                    out.write(line)
        out.flush()
    return rep
