"""The caption record and everything that writes or reads it; input expansion.

* :class:`CaptionRecord` -- one JSON line of ``audiocap caption`` (the caption of one window of
  one input, or the error that stopped the input): built, serialised and parsed only here.
* :class:`RecordWriter` -- crash-safe, resumable JSONL/CSV output of those records.
* :func:`read_predictions` / :func:`match_predictions` -- a prediction file (our JSONL or an
  aac-metrics / DCASE CSV) read back for scoring and re-keyed by reference clip id.
* :func:`expand_inputs` -- files, directories, globs and ``-`` for batch commands.

Kept apart from the pipeline so that resume and reading logic is tested without any model.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from ..audio.io import AUDIO_EXTENSIONS
from ..errors import MetricsError, UsageError
from ..locks import hold_output

#: Longest line ``-`` reads from stdin as one path, in characters (Linux's PATH_MAX is 4096
#: bytes): a longer line is no path, and reading on would let /dev/zero eat all memory.
MAX_PATH_CHARS = 4096
#: Most paths ``-`` reads from stdin (a list far beyond any real batch is a mistake, not work).
MAX_STDIN_PATHS = 10_000_000


def file_key(path: str) -> str:
    """The file a path names, whatever its spelling (``a.wav``, ``./a.wav``, ``d/../a.wav``, its
    absolute path, a symlink to it): the key inputs are de-duplicated and resumed by. Relative
    paths are resolved against the current directory."""
    return os.path.realpath(path)


def _looks_like_audio(path: str) -> bool:
    return os.path.basename(os.path.normpath(path)).lower().endswith(AUDIO_EXTENSIONS)


def _stdin_paths(stdin: TextIO) -> Iterator[str]:
    """Non-blank lines of ``stdin``, read in bounded memory: a line longer than
    :data:`MAX_PATH_CHARS`, holding a NUL, not text, or more than :data:`MAX_STDIN_PATHS`
    paths is a UsageError (``caption - < /dev/zero`` must fail at once, not exhaust memory)."""
    count = 0
    for no in itertools.count(1):
        try:
            line = stdin.readline(MAX_PATH_CHARS + 2)  # room for the path and its "\r\n"
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin: line {no} is not UTF-8 text ({e.reason})") from e
        if not line:
            return
        path = line.rstrip("\r\n")
        if len(path) > MAX_PATH_CHARS:
            raise UsageError(
                f"stdin: line {no} is longer than {MAX_PATH_CHARS} characters "
                "(- reads one path per line)"
            )
        if "\0" in path:
            raise UsageError(f"stdin: line {no} holds a NUL character (- reads one path per line)")
        if path.strip():
            count += 1
            if count > MAX_STDIN_PATHS:
                raise UsageError(f"stdin: more than {MAX_STDIN_PATHS} paths")
            yield path


def expand_inputs(inputs: Iterable[str], stdin: TextIO | None = None) -> list[str]:
    """Files, directories (recursive, audio extensions only, sorted), globs, and ``-``.

    ``-`` reads one path per line from ``stdin`` (bounded: see :func:`_stdin_paths`). Paths are
    returned as given (not resolved), in order, each file once: a file under several spellings
    (:func:`file_key`) keeps its first. Nothing is dropped silently: a path that does not exist,
    a glob matching nothing, a directory named like audio (given itself or found inside a
    directory; still searched itself), a directory that cannot be listed, or anything named
    like audio that is no regular file (a FIFO, socket or device) is kept as is, so that it
    yields an error record. Nothing is opened here: audio.open_regular refuses those later,
    one error record each.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        key = file_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    def unlisted(e: OSError) -> None:
        # os.walk skips a directory it cannot list (permission denied...) unless told: keep it
        # as an input, so that it fails with its own error record and counts among failures.
        if e.filename is not None:
            found.append(str(Path(os.fsdecode(e.filename))))  # spelled as the walk's own paths

    for item in inputs:
        if item == "-":
            if stdin is None:
                continue
            for line in _stdin_paths(stdin):
                add(line)
        elif os.path.isdir(item):
            if _looks_like_audio(item):
                add(item)  # `x.wav/` given by name: an error record, not nothing
            found: list[str] = []
            for root, dirs, files in os.walk(item, onerror=unlisted):
                found += [
                    str(Path(root) / name)
                    for name in files + dirs
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


# Test hook (fault injection), not a feature. With AUDIOCAP_TEST_KILL_AFTER=N in the environment
# the process SIGKILLs itself as soon as the N-th RecordWriter.write has been flushed, so that the
# crash-and-resume test kills mid-run deterministically, whatever the machine's speed
# (tests/test_pipeline.py::test_caption_resume_after_sigkill). Unset, it costs a dict lookup.
_TEST_KILL_AFTER = "AUDIOCAP_TEST_KILL_AFTER"
_writes_flushed = 0


def _test_kill_hook() -> None:
    global _writes_flushed
    _writes_flushed += 1
    after = os.environ.get(_TEST_KILL_AFTER)
    if after and _writes_flushed >= int(after):
        import signal

        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


class Guide(NamedTuple):
    """One guidance caption of a record and its index distance (None when not retrieved)."""

    caption: str
    distance: float | None


#: Keys a JSON line may name its input by (``path`` is ours; the others come from other tools).
KEY_FIELDS: tuple[str, ...] = ("path", "id", "file_name", "fname")


@dataclass
class CaptionRecord:
    """One line of ``audiocap caption``: the caption of one window of ``path`` (``start``/``end``
    seconds; its ``confidence`` in [0, 1], :func:`pipeline.confidence.confidence`; the
    tagger's top classes ``tags`` as [name, score] pairs, best first; the K ``guidance``
    captions; ``retrieved`` true where the caption is a retrieved human caption rather than the
    decoder's; ``last`` true on the final window of a file captioned in windows mode, so that
    ``--resume`` knows the file is complete), or the ``error`` that stopped the whole input.

    :meth:`to_json` gives the public line format (fields in this order, unset ones left out);
    :meth:`from_json` reads it back, also from lines keyed ``id``/``file_name``/``fname``.
    """

    path: str
    start: float | None = None
    end: float | None = None
    caption: str | None = None
    confidence: float | None = None
    tags: list[tuple[str, float]] | None = None
    guidance: list[Guide] | None = None
    error: str | None = None
    error_type: str | None = None
    retrieved: bool | None = None  # None (left out of the line): the decoder's own caption
    # True on a windows-mode file's final window (None, left out, elsewhere): a long file's
    # windows are written as they are captioned, so its records alone must say it is complete.
    last: bool | None = None

    @classmethod
    def failure(cls, path: str, error: str, error_type: str) -> "CaptionRecord":
        return cls(path, error=error, error_type=error_type)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "guidance":
                v = [g._asdict() for g in v]
            elif f.name == "tags":
                v = [[name, score] for name, score in v]
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, obj: Any) -> "CaptionRecord":
        """Parse one decoded JSON line; ValueError saying what is wrong with it."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        key = next((obj[k] for k in KEY_FIELDS if k in obj), None)
        if not isinstance(key, str) or not key:
            raise ValueError('no "path"')
        if isinstance(obj.get("caption"), str):
            guides, tags = obj.get("guidance"), obj.get("tags")
            return cls(
                key,
                obj.get("start"),
                obj.get("end"),
                obj["caption"],
                obj.get("confidence"),
                [(str(t[0]), t[1]) for t in tags if isinstance(t, list) and len(t) == 2]
                if isinstance(tags, list)
                else None,
                [Guide(g.get("caption"), g.get("distance")) for g in guides if isinstance(g, dict)]
                if isinstance(guides, list)
                else None,
                retrieved=True if obj.get("retrieved") is True else None,
                last=True if obj.get("last") is True else None,
            )
        if "error" in obj:
            return cls.failure(key, str(obj["error"]), str(obj.get("error_type", "")) or None)  # type: ignore[arg-type]
        raise ValueError('no "caption" (nor "error")')


def _parse(obj: Any) -> CaptionRecord | None:
    try:
        return CaptionRecord.from_json(obj)
    except ValueError:
        return None


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

    A write is one ``write`` call, flushed, so a kill leaves at most one partial last line.
    Each input's records go out in one write, except a long file in windows mode (JSONL): its
    windows go out a chunk at a time as they are captioned, the final one marked ``"last":
    true``. With ``resume``, an existing output file is first rewritten without error records
    and partial lines; the inputs it already holds are then skipped (:meth:`is_done`: by the
    file, whatever the spelling), and a windows-mode file without its last window goes on at
    its next window: :meth:`resumed_until` gives the last window it holds, and :meth:`write`
    never writes a window up to it again. A file's windows are written in order, so a killed
    run holds a prefix of them: the last one's start says which. Format ``jsonl`` (default) or
    ``csv`` (``file_name,caption_predicted``, the candidate layout aac-metrics reads; one row
    per segment; no window times, so a file's rows always go out in one write).
    """

    def __init__(
        self,
        path: str | None,
        fmt: str = "jsonl",
        resume: bool = False,
        stdout: TextIO | None = None,
    ) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        # Whether one input's records may go out in several writes (see the class docstring).
        self.streams = fmt == "jsonl"
        self.done: set[str] = set()  # the finished inputs' paths, as the output spells them
        self._done_files: set[str] = set()
        # Resumed JSONL, by file_key: the files whose last window is written, and the start of
        # the latest window each file holds (seconds, as records print them) where it is past
        # 0 (a file without an entry holds its window at 0; crop mode costs nothing here).
        self._last_files: set[str] = set()
        self._until: dict[str, float] = {}
        self._own = path is not None and path != "-"
        self._held = contextlib.ExitStack()
        if self._own:
            target = Path(path)  # type: ignore[arg-type]
            target.parent.mkdir(parents=True, exist_ok=True)
            # One writer per output file, from before it is read (locks.hold_output): a second
            # run fails at once instead of interleaving lines or writing into a replaced file.
            self._held.enter_context(hold_output(target))
            try:
                self._open(target, resume)
            except BaseException:
                self._held.close()
                raise
        else:
            import sys

            self._f = stdout or sys.stdout
        if self.fmt == "csv" and (not self._own or self._f.tell() == 0):
            self._write_rows([("file_name", "caption_predicted")])

    def _open(self, target: Path, resume: bool) -> None:
        if resume and target.is_file():
            self.done = self._recover(target)
            # Keyed by the file (file_key), so that a resumed run naming the same clips
            # otherwise (absolute after relative, through a symlink) does not caption them
            # again. Assumption: relative paths in the output were given from the current
            # directory, as the run that wrote them was started from (not recorded).
            self._done_files = {file_key(p) for p in self.done}
        self._f: TextIO = open(target, "a" if resume else "w", encoding="utf-8", newline="")

    def is_done(self, path: str, windows: bool = False) -> bool:
        """Whether the resumed output already holds ``path``'s file, under any spelling; with
        ``windows`` (a windows-mode run), whether it holds the file's last window."""
        if not self._done_files:
            return False
        key = file_key(path)
        if windows and self.streams:
            return key in self._last_files
        return key in self._done_files

    def resumed_until(self, path: str) -> float | None:
        """Start (seconds) of the latest window of ``path``'s file the resumed output holds, all
        windows before it held too; None when it holds none of the file (and always in CSV,
        which has no window times)."""
        if not self.streams or not self._done_files:
            return None
        key = file_key(path)
        return self._until.get(key, 0.0) if key in self._done_files else None

    def _recover(self, target: Path) -> set[str]:
        """Keep finished records, drop error records and a cut-short last line; return done paths."""
        keep: list[str] = []
        done: set[str] = set()
        if self.fmt == "jsonl":
            for line, obj in _complete_lines(target):
                rec = _parse(obj)
                if rec is not None and not rec.failed:
                    keep.append(line)
                    done.add(rec.path)
                    if isinstance(rec.start, (int, float)) and rec.start > 0:
                        key = file_key(rec.path)
                        self._until[key] = max(self._until.get(key, 0.0), float(rec.start))
                    if rec.last:
                        self._last_files.add(file_key(rec.path))
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
        for key in self._last_files:  # complete: skipped, never looked up
            self._until.pop(key, None)
        return done

    def _write_rows(self, rows: list[tuple[str, str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self._f.write(buf.getvalue())
        self._f.flush()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write records in one flushed write (one line per segment): all of one input's, or
        a chunk of a long file's windows; ``records`` are JSON objects as
        :meth:`CaptionRecord.to_json` makes them. A window the resumed output already holds
        (:meth:`resumed_until`) is left out."""
        if self._done_files and self.streams:
            records = [r for r in records if not self._holds(r)]
            if not records:
                return
        if self.fmt == "jsonl":
            self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._f.flush()
        else:
            self._write_rows([(str(r["path"]), r["caption"]) for r in records if "caption" in r])
        _test_kill_hook()

    def _holds(self, record: dict[str, Any]) -> bool:
        start = record.get("start")
        if start is None or "error" in record:
            return False
        until = self.resumed_until(str(record["path"]))
        return until is not None and float(start) <= until

    def close(self) -> None:
        if self._own:
            try:
                self._f.close()
            finally:
                self._held.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Prediction files
# ----------------------------------------------------------------------------------------------

#: Column names accepted in prediction CSVs. aac-metrics' CLI reads ``caption_predicted`` by
#: default and DCASE submissions use ``file_name,caption_predicted``; ``fname,caption`` is the
#: other common layout.
CSV_KEY_COLUMNS: tuple[str, ...] = ("path", "file_name", "fname", "filename", "file", "audio", "id")
CSV_CAPTION_COLUMNS: tuple[str, ...] = (
    "caption",
    "caption_predicted",
    "prediction",
    "preds",
    "candidate",
)


class Predictions(dict[str, str]):
    """key (path / file name / id) -> caption, plus what could not be scored.

    ``errors``: key -> error message for clips whose captioning failed (JSONL lines with
    ``"error"`` instead of ``"caption"``); they are counted and reported, never scored.
    """

    def __init__(self, captions: Mapping[str, str], errors: Mapping[str, str], source: str) -> None:
        super().__init__(captions)
        self.errors: dict[str, str] = dict(errors)
        self.source = source


def read_predictions(path: str | Path) -> Predictions:
    """Read our ``audiocap caption`` JSONL, or an aac-metrics / DCASE style CSV.

    JSONL: one object per line with ``path`` and ``caption`` (or ``error``); for a path given
    several times the last line wins (a resumed run appends). CSV: a header with a key column
    (one of :data:`CSV_KEY_COLUMNS`) and a caption column (one of :data:`CSV_CAPTION_COLUMNS`).
    Malformed input is a MetricsError naming the line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: predictions file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsError(f"{path}: unreadable predictions file ({e})") from e
    suffix = path.suffix.lower()
    is_jsonl = suffix in (".jsonl", ".json", ".ndjson") or (
        suffix != ".csv" and text.lstrip().startswith("{")
    )
    return _read_jsonl(path, text) if is_jsonl else _read_csv(path, text)


def _raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise MetricsError(f"{path}: {len(problems)} malformed line(s): {shown}{more}")


def _read_jsonl(path: Path, text: str) -> Predictions:
    captions: dict[str, str] = {}
    errors: dict[str, str] = {}
    problems: list[str] = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = CaptionRecord.from_json(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"line {no}: not JSON")
            continue
        except ValueError as e:
            problems.append(f"line {no}: {e}")
            continue
        if rec.failed:
            errors[rec.path] = str(rec.error)
            captions.pop(rec.path, None)
        else:
            captions[rec.path] = str(rec.caption)
            errors.pop(rec.path, None)
    _raise_problems(path, problems)
    if not captions and not errors:
        raise MetricsError(f"{path}: no predictions in file")
    return Predictions(captions, errors, str(path))


def _read_csv(path: Path, text: str) -> Predictions:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    lower = {h.lower(): h for h in header}
    key_col = next((lower[c] for c in CSV_KEY_COLUMNS if c in lower), None)
    cap_col = next((lower[c] for c in CSV_CAPTION_COLUMNS if c in lower), None)
    if key_col is None or cap_col is None:
        raise MetricsError(
            f"{path}: CSV header {','.join(header) or '(empty)'} needs a key column "
            f"({'/'.join(CSV_KEY_COLUMNS)}) and a caption column ({'/'.join(CSV_CAPTION_COLUMNS)})"
        )
    reader.fieldnames = header
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    for row in reader:
        no = reader.line_num
        if None in row or any(v is None for v in row.values()):
            problems.append(f"line {no}: expected {len(header)} fields")
        else:
            key, cap = (row[key_col] or "").strip(), row[cap_col]
            if not key:
                problems.append(f"line {no}: empty {key_col}")
            elif key in captions:
                problems.append(f"line {no}: {key} repeats line {first_line[key]}")
            else:
                captions[key] = cap
                first_line[key] = no
    _raise_problems(path, problems)
    if not captions:
        raise MetricsError(f"{path}: no predictions in file")
    return Predictions(captions, {}, str(path))


# ----------------------------------------------------------------------------------------------
# Matching prediction keys to reference clip ids
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matched:
    """``predictions`` re-keyed by clip id; ``unmatched``: prediction keys matching no clip;
    ``missing``: clip ids without a prediction."""

    predictions: dict[str, str]
    unmatched: list[str]
    missing: list[str]


def _name(s: str) -> str:
    return s.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _stem(s: str) -> str:
    n = _name(s)
    return n.rsplit(".", 1)[0] if "." in n[1:] else n


def match_predictions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    paths: Mapping[str, str | Path] | None = None,
) -> Matched:
    """Re-key predictions by reference clip id.

    A prediction key matches a clip, in this order of precedence: its id exactly; its audio
    path (``paths``: clip id -> path, e.g. from ``datasets.Clip.path``; compared normalised);
    the file name (``.../x.wav`` == ``x.wav``); the file stem (``x.wav`` == ``x``). A key matching
    two clips at the first rule that hits, or two keys matching one clip, is a MetricsError.
    """
    paths = paths or {}
    rules: list[dict[str, set[str]]] = [{}, {}, {}, {}]
    for cid in references:
        p = paths.get(cid)
        rules[0].setdefault(cid, set()).add(cid)
        if p is not None:
            rules[1].setdefault(os.path.normpath(str(p)), set()).add(cid)
        for v in {cid, str(p)} if p is not None else {cid}:
            rules[2].setdefault(_name(v), set()).add(cid)
            rules[3].setdefault(_stem(v), set()).add(cid)
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    unmatched: list[str] = []
    problems: list[str] = []
    for key, cap in predictions.items():
        probes = (key, os.path.normpath(key), _name(key), _stem(key))
        hit: set[str] | None = None
        for table, probe in zip(rules, probes):
            if probe in table:
                hit = table[probe]
                break
        if hit is None:
            unmatched.append(key)
        elif len(hit) > 1:
            problems.append(f"{key} matches several clips ({', '.join(sorted(hit)[:3])})")
        else:
            cid = next(iter(hit))
            if cid in owner:
                problems.append(f"{owner[cid]} and {key} both match clip {cid}")
            else:
                owner[cid] = key
                out[cid] = cap
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise MetricsError(f"ambiguous prediction keys: {'; '.join(problems[:5])}{more}")
    missing = [cid for cid in references if cid not in out]
    return Matched(out, unmatched, missing)
