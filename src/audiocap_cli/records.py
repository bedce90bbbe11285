"""Input expansion and crash-safe JSONL/CSV output for batch commands.

Kept apart from the pipeline so that resume logic is tested without any model.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .audio import AUDIO_EXTENSIONS


def expand_inputs(inputs: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Files, directories (recursive, audio extensions only, sorted), globs, and ``-``.

    ``-`` reads one path per line from ``stdin``. Paths are returned as given (not resolved),
    in order, without duplicates. A path that does not exist, or a glob matching nothing, is
    kept as is, so that it yields an error record rather than vanishing silently.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for item in inputs:
        if item == "-":
            if stdin is None:
                continue
            for line in stdin:
                line = line.rstrip("\r\n")
                if line.strip():
                    add(line)
        elif os.path.isdir(item):
            found = [
                str(Path(root) / name)
                for root, _dirs, files in os.walk(item)
                for name in files
                if name.lower().endswith(AUDIO_EXTENSIONS)
            ]
            for p in sorted(found):
                add(p)
        elif not os.path.exists(item) and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            for p in matches if matches else [item]:
                add(p)
        else:
            add(item)
    return out


def _complete_lines(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Lines of a JSONL file with their parsed object (None where unparseable or cut short)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                yield line, None  # cut short by a kill mid-write
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            yield line, obj if isinstance(obj, dict) else None


class RecordWriter:
    """Writes one record per line to stdout or a file, resumably.

    Each record (all segments of one input) goes out in a single ``write`` and is flushed, so
    a kill leaves at most one partial last line. With ``resume``, an existing output file is
    first rewritten without error records and partial lines; the inputs it already holds are
    then skipped. Format ``jsonl`` (default) or ``csv`` (``file_name,caption_predicted``, the
    candidate layout aac-metrics reads; one row per segment).
    """

    def __init__(self, path: str | None, fmt: str = "jsonl", resume: bool = False, stdout: TextIO | None = None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.done: set[str] = set()
        self._own = path is not None and path != "-"
        if self._own:
            target = Path(path)  # type: ignore[arg-type]
            target.parent.mkdir(parents=True, exist_ok=True)
            if resume and target.is_file():
                self.done = self._recover(target)
            self._f: TextIO = open(target, "a" if resume else "w", encoding="utf-8", newline="")
        else:
            import sys

            self._f = stdout or sys.stdout
        if self.fmt == "csv" and (not self._own or self._f.tell() == 0):
            self._write_rows([("file_name", "caption_predicted")])

    def _recover(self, target: Path) -> set[str]:
        """Keep finished records, drop error records and a cut-short last line; return done paths."""
        keep: list[str] = []
        done: set[str] = set()
        if self.fmt == "jsonl":
            for line, obj in _complete_lines(target):
                if obj is not None and "error" not in obj and "path" in obj:
                    keep.append(line)
                    done.add(str(obj["path"]))
        else:
            text = target.read_text(encoding="utf-8", errors="replace")
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
            rows = list(csv.reader(io.StringIO(text)))
            keep = [text] if rows else []
            done = {r[0] for r in rows[1:] if r}
        tmp = target.with_name(f".{target.name}.resume")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, target)
        return done

    def _write_rows(self, rows: list[tuple[str, str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self._f.write(buf.getvalue())
        self._f.flush()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write all records of one input at once (one line per segment)."""
        if self.fmt == "jsonl":
            self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._f.flush()
        else:
            self._write_rows([(str(r["path"]), r["caption"]) for r in records if "caption" in r])

    def close(self) -> None:
        if self._own:
            self._f.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
