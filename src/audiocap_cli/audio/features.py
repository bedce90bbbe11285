"""Content-keyed disk cache of frozen-encoder features.

The encoder is frozen, so a clip's frames depend only on (file bytes, encoder config, clip
policy). An entry is keyed on exactly that: the sha256 of the file's bytes inside a directory
named by the encoder-config and policy fingerprints, so an edited file or a changed config is
recomputed, never silently reused. Layout::

    <root>/<EncoderConfigClass>-<encoder fp>-<policy fp>-<sr>Hz-v<FORMAT_VERSION>/
        encoder.json   policy.json                 (config.save_config; checked on first use)
        ab/abcdef....feat                           (one per distinct file content)

Entries are written atomically (readers see a whole entry or none) and carry a crc32 of
their samples; an unreadable, damaged or inconsistent entry is recomputed and overwritten. Stored as float32: a 10 s clip through
YAMNet is ~120 KB (20 x 1024 frames + 20 x 521 scores).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..config import (
    atomic_write_bytes,
    check_config,
    file_sha256,
    fingerprint,
    load_config,
    save_config,
)
from ..errors import AudioError, AudioNotFoundError, ConfigMismatchError, ModelNotFoundError
from ..resources import cache_dir
from . import io as audio
from .io import ClipPolicy

# Bump when the entry layout changes, so old entries are never read with new code.
FORMAT_VERSION = 1
# Entry file: magic, u32 header length, JSON header (shapes, windows, sha256, crc32 of the
# payload), then raw little-endian float32 frames and scores. Not .npz: np.load parses every
# array header with ast.literal_eval: reading a 10 s YAMNet-sized entry took 2.3 ms as .npz
# against 0.26 ms in this format (measured on the 2-core dev box).
_MAGIC = b"AUDIOCAP-FEATURES\n"
_HEAD = struct.Struct("<I")


class _EncoderOutput(Protocol):
    frames: torch.Tensor  # [B, T, D]
    scores: torch.Tensor | None  # [B, T, C]


class Encoder(Protocol):
    """What the cache needs of an audio encoder (see encoders/)."""

    config: Any  # a frozen dataclass
    dim: int
    sample_rate: int

    def encode(self, waves: torch.Tensor) -> _EncoderOutput: ...


@dataclass(frozen=True, eq=False)
class ClipFeatures:
    """Encoder output for one file: one row per policy window.

    frames [W, T, D] float32, scores [W, T, C] float32 or None, starts/ends [W] seconds of real
    audio in each window (see audio.segments), duration of the whole file in seconds.
    """

    frames: np.ndarray
    scores: np.ndarray | None
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    duration: float


def file_digest(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, streamed in 1 MiB reads (bounded memory);
    anything but a readable regular file is AudioNotFoundError (see audio.open_regular: a FIFO
    or /dev/zero is refused, never read)."""
    p = Path(path)
    with audio.open_regular(p) as f:
        try:
            return file_sha256(f)
        except OSError as e:
            raise AudioNotFoundError(p, f"cannot read ({e.strerror or e})") from e


def _stat_sig(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class _Job:
    """One distinct file content being encoded; ``owners`` are its indices in the input."""

    digest: str
    path: Path
    sig: tuple[int, int, int] | None
    owners: list[int]
    starts: tuple[float, ...] = ()
    ends: tuple[float, ...] = ()
    duration: float = 0.0
    capacity: int = 1  # windows expected (audio.SegmentStream.expected)
    queued: int = 0  # windows cut so far
    entry: "_Entry | None" = None  # its features, filled as batches are encoded


# A JSON float is at most 24 characters (repr of -2.2250738585072014e-308).
_WIDEST_FLOAT = -2.2250738585072014e-308


class _Entry:
    """One cache entry's bytes, filled window by window as the encoder produces them (so the
    features of a long file are held once, not as batch outputs and again as the entry).

    ``frames`` / ``scores``: float32 views ``[count, T, D]`` / ``[count, T, C]`` into the bytes.
    Room is laid out for ``capacity`` windows and the header their widest JSON needs; ``add``
    grows it if needed (an MP3 longer than its header said), ``seal`` moves the scores up to
    the frames actually present, writes the header (padded with spaces) and returns the bytes.
    Filled to capacity (the usual case: the header's length is exact but for MP3), nothing
    moves; otherwise the scores' old place stays allocated as long as the features live.
    """

    def __init__(
        self,
        digest: str,
        frame: tuple[int, ...],
        score: tuple[int, ...] | None,
        capacity: int,
        source: Path,
    ) -> None:
        self.digest, self.frame, self.score, self.source = digest, tuple(frame), score, source
        self.capacity, self.count = max(1, capacity), 0
        widest = [_WIDEST_FLOAT] * self.capacity
        self.head = len(
            json.dumps(
                self._meta(self.capacity, widest, widest, _WIDEST_FLOAT, 0xFFFFFFFF)
            ).encode()
        )
        self.offset = len(_MAGIC) + _HEAD.size + self.head
        self.nf, self.ns = math.prod(self.frame), 0 if score is None else math.prod(score)
        # np.zeros (calloc): pages cost memory only once written, so room for windows that
        # never come costs nothing.
        self.blob = np.zeros(self.offset + 4 * self.capacity * (self.nf + self.ns), dtype=np.uint8)
        self._frames = self._view(self.offset, self.capacity, self.frame)
        self._scores = (
            None
            if score is None
            else self._view(self.offset + 4 * self.capacity * self.nf, self.capacity, score)
        )

    def _view(self, at: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(self.blob, "<f4", n * math.prod(shape), at).reshape(n, *shape)

    def _meta(
        self, n: int, starts: Sequence[float], ends: Sequence[float], duration: float, crc: int
    ) -> dict[str, Any]:
        return {
            "sha256": self.digest,
            "frames": [n, *self.frame],
            "scores": None if self.score is None else [n, *self.score],
            "starts": list(starts),
            "ends": list(ends),
            "duration": duration,
            "crc32": crc,
            "source": str(self.source),  # informative only: the key is the content
        }

    @property
    def frames(self) -> np.ndarray:
        return self._frames[: self.count]

    @property
    def scores(self) -> np.ndarray | None:
        return None if self._scores is None else self._scores[: self.count]

    def add(self, frames: np.ndarray, scores: np.ndarray | None) -> None:
        """Append one window's frames ``[T, D]`` and scores ``[T, C]``."""
        if self.count == self.capacity:
            bigger = _Entry(self.digest, self.frame, self.score, 2 * self.capacity, self.source)
            for i in range(self.count):
                bigger.add(self._frames[i], None if self._scores is None else self._scores[i])
            self.__dict__.update(bigger.__dict__)
        self._frames[self.count] = frames
        if self._scores is not None:
            self._scores[self.count] = scores
        self.count += 1

    def seal(self, starts: Sequence[float], ends: Sequence[float], duration: float) -> memoryview:
        """The entry's bytes for ``count`` windows (views ``frames``/``scores`` stay valid)."""
        n = self.count
        if self._scores is not None and n < self.capacity:
            # Scores follow the frames: move them up, window by window in order (each target
            # lies below its source, so no source is overwritten before it is read).
            moved = self._view(self.offset + 4 * n * self.nf, n, self.score)  # type: ignore[arg-type]
            for i in range(n):
                moved[i] = self._scores[i]
            self._scores = moved
        size = self.offset + 4 * n * (self.nf + self.ns)
        view = memoryview(self.blob)[:size]
        crc = zlib.crc32(view[self.offset :])
        head = json.dumps(self._meta(n, starts, ends, duration, crc)).encode()
        assert len(head) <= self.head, "header room was sized for the widest values"
        view[: self.offset] = _MAGIC + _HEAD.pack(self.head) + head.ljust(self.head)
        return view


def encode_windows(
    encoder: Encoder, waves: Sequence[np.ndarray], lengths: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames ``[B, T, D]`` and scores ``[B, T, C]`` (or None) of windows ``waves`` (each
    ``[N]``, ``lengths[b]`` samples of it real audio, the rest zero padding), as float32 numpy.
    An encoder that hears a window's audio only, not its padding (EfficientAT's clip-level
    pass), is told each window's real length."""
    batch = torch.from_numpy(np.stack(waves))  # [B, N]
    with torch.inference_mode():
        if getattr(encoder, "takes_lengths", False):
            out = encoder.encode(batch, lengths=list(lengths))
        else:
            out = encoder.encode(batch)
    frames = out.frames.detach().to("cpu", torch.float32).numpy()  # [B, T, D]
    scores = None if out.scores is None else out.scores.detach().to("cpu", torch.float32).numpy()
    return frames, scores


class FeatureCache:
    """Disk cache of :class:`ClipFeatures` (default root: ``resources.cache_dir()/"features"``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self._checked: set[Path] = set()

    # -- layout ---------------------------------------------------------------------------

    def directory(self, encoder: Encoder, policy: ClipPolicy) -> Path:
        """The entry directory for this encoder config and policy, created and checked."""
        cfg = encoder.config
        name = (
            f"{type(cfg).__name__}-{fingerprint(cfg)}-{fingerprint(policy)}"
            f"-{int(encoder.sample_rate)}Hz-v{FORMAT_VERSION}"
        )
        d = self.root / name
        if d not in self._checked:
            enc_json, pol_json = d / "encoder.json", d / "policy.json"
            try:
                if enc_json.is_file() and pol_json.is_file():
                    check_config(cfg, load_config(type(cfg), enc_json), f"feature cache {d}")
                    check_config(policy, load_config(ClipPolicy, pol_json), f"feature cache {d}")
                else:
                    save_config(cfg, enc_json, sample_rate=int(encoder.sample_rate))
                    save_config(policy, pol_json)
            except (ConfigMismatchError, ModelNotFoundError) as e:
                raise ConfigMismatchError(f"{e}; delete {d} to rebuild it") from e
            self._checked.add(d)
        return d

    @staticmethod
    def _entry(d: Path, digest: str) -> Path:
        return d / digest[:2] / f"{digest}.feat"

    def _read(self, path: Path, digest: str, dim: int | None) -> ClipFeatures | None:
        """The stored entry, or None when absent, unreadable, damaged or inconsistent."""
        try:
            with open(path, "rb") as f:
                blob = bytearray(os.fstat(f.fileno()).st_size)  # bytearray: writable arrays
                if f.readinto(blob) != len(blob):
                    return None
        except OSError:
            return None
        try:
            head_end = _HEAD.size + len(_MAGIC)
            if blob[: len(_MAGIC)] != _MAGIC:
                return None
            (n,) = _HEAD.unpack_from(blob, len(_MAGIC))
            meta = json.loads(bytes(blob[head_end : head_end + n]))
            payload = memoryview(blob)[head_end + n :]
            fshape = tuple(meta["frames"])
            sshape = None if meta["scores"] is None else tuple(meta["scores"])
            sizes = [math.prod(fshape) * 4, 0 if sshape is None else math.prod(sshape) * 4]
            if (
                meta["sha256"] != digest
                or len(payload) != sum(sizes)
                or zlib.crc32(payload) != meta["crc32"]
                or len(fshape) != 3
                or fshape[0] < 1
                or (dim is not None and fshape[2] != dim)
                or len(meta["starts"]) != fshape[0]
                or len(meta["ends"]) != fshape[0]
                or (sshape is not None and (len(sshape) != 3 or sshape[:2] != fshape[:2]))
            ):
                return None
            frames = np.frombuffer(payload, dtype="<f4", count=sizes[0] // 4).reshape(fshape)
            scores = None
            if sshape is not None:
                scores = np.frombuffer(payload, dtype="<f4", offset=sizes[0]).reshape(sshape)
            return ClipFeatures(
                frames,
                scores,
                tuple(map(float, meta["starts"])),
                tuple(map(float, meta["ends"])),
                float(meta["duration"]),
            )
        except (ValueError, KeyError, TypeError, struct.error):  # bad JSON/shape: recompute
            return None

    @staticmethod
    def _write(path: Path, digest: str, feats: ClipFeatures, source: Path) -> None:
        sshape = None if feats.scores is None else feats.scores.shape[1:]
        entry = _Entry(digest, feats.frames.shape[1:], sshape, len(feats.frames), source)
        for i in range(len(feats.frames)):
            entry.add(feats.frames[i], None if feats.scores is None else feats.scores[i])
        atomic_write_bytes(path, entry.seal(feats.starts, feats.ends, feats.duration))

    # -- public ---------------------------------------------------------------------------

    def get(self, path: str | Path, encoder: Encoder, policy: ClipPolicy) -> ClipFeatures:
        """Features of one file, from the cache or computed; raises the file's AudioError."""
        result = self.get_many([path], encoder, policy)[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def get_many(
        self,
        paths: Sequence[str | Path],
        encoder: Encoder,
        policy: ClipPolicy,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> list[ClipFeatures | AudioError]:
        """Features of every path, in order; a file that cannot be used yields its AudioError
        in its slot instead of stopping the batch.

        Misses are decoded at ``encoder.sample_rate``, cut per ``policy``, and their windows
        run through ``encoder.encode`` in batches of ``batch_size`` windows [B, N] (windows of
        several files share a batch). Files with identical content are encoded once.
        ``progress(n)`` is called as n more files are finished (hits, errors or computed).
        """
        batch_size = max(1, int(batch_size))
        d = self.directory(encoder, policy)
        results: list[ClipFeatures | AudioError | None] = [None] * len(paths)

        def finish(indices: list[int], value: ClipFeatures | AudioError) -> None:
            for i in indices:
                results[i] = value
            if progress is not None:
                progress(len(indices))

        jobs = self._lookup(paths, d, getattr(encoder, "dim", None), finish)
        self._compute(jobs, d, encoder, policy, batch_size, finish)
        return results  # type: ignore[return-value]

    def _lookup(
        self,
        paths: Sequence[str | Path],
        d: Path,
        dim: int | None,
        finish: Callable[[list[int], Any], None],
    ) -> dict[str, _Job]:
        """Hash every file and serve what the cache holds; identical contents are looked up (or
        computed) once. Returns the misses, one job per content digest."""
        hits: dict[str, ClipFeatures] = {}
        jobs: dict[str, _Job] = {}
        for i, raw in enumerate(paths):
            p = Path(raw)
            sig = _stat_sig(p)
            try:
                digest = file_digest(p)
            except AudioError as e:
                finish([i], e)
                continue
            if digest in hits:
                finish([i], hits[digest])
            elif digest in jobs:
                jobs[digest].owners.append(i)
            elif (hit := self._read(self._entry(d, digest), digest, dim)) is not None:
                hits[digest] = hit
                finish([i], hit)
            else:
                jobs[digest] = _Job(digest, p, sig, [i])
        return jobs

    def _compute(
        self,
        jobs: dict[str, _Job],
        d: Path,
        encoder: Encoder,
        policy: ClipPolicy,
        batch_size: int,
        finish: Callable[[list[int], Any], None],
    ) -> None:
        """Decode, window and encode the misses, streaming: memory holds one batch of windows
        plus a block of the file being decoded (audio.SegmentStream), never a whole file; what
        grows with a file's length is its features (job.entry), held once."""
        queue: list[tuple[_Job, np.ndarray, int]] = []
        sr = int(encoder.sample_rate)
        for job in jobs.values():
            stream = audio.SegmentStream(job.path, policy, sr)
            try:
                for w in stream:
                    if not job.queued:  # room for the windows the header promises (exactly:
                        job.capacity = stream.expected  # spare room would cost a move in seal)
                    job.queued += 1
                    queue.append((job, w, stream.length))
                    if len(queue) >= batch_size:
                        self._encode_batch(queue[:batch_size], d, encoder, finish)
                        queue = queue[batch_size:]
            except AudioError as e:  # possibly after some windows (damage near the end)
                queue = [q for q in queue if q[0] is not job]
                job.entry = None
                finish(job.owners, e)
                continue
            # Known only now that the whole file has been read (_encode_batch completes jobs
            # whose starts are set; this one may have had all its windows encoded already).
            job.starts, job.ends, job.duration = stream.starts, stream.ends, stream.duration
            if job.entry is not None and job.entry.count == len(job.starts):
                self._complete(d, job, finish)
        if queue:
            self._encode_batch(queue, d, encoder, finish)

    def _encode_batch(
        self,
        batch: list[tuple[_Job, np.ndarray, int]],
        d: Path,
        encoder: Encoder,
        finish: Callable[[list[int], Any], None],
    ) -> None:
        """Encode windows ``[B, N]`` of several files (:func:`encode_windows`) and append each
        to its file's entry."""
        frames, scores = encode_windows(encoder, [w for _, w, _ in batch], [n for _, _, n in batch])
        for b, (job, _, _) in enumerate(batch):
            if job.entry is None:
                score = None if scores is None else scores.shape[1:]
                job.entry = _Entry(job.digest, frames.shape[1:], score, job.capacity, job.path)
            job.entry.add(frames[b], None if scores is None else scores[b])
            if job.entry.count == len(job.starts):  # starts are set once the file is read
                self._complete(d, job, finish)

    def _complete(self, d: Path, job: _Job, finish: Callable[[list[int], Any], None]) -> None:
        entry, job.entry = job.entry, None
        assert entry is not None
        blob = entry.seal(job.starts, job.ends, job.duration)
        # Store only if the file did not change while we read it (else the digest would name
        # features of other bytes); the result is still returned.
        if _stat_sig(job.path) == job.sig:
            atomic_write_bytes(self._entry(d, job.digest), blob)
        finish(
            job.owners, ClipFeatures(entry.frames, entry.scores, job.starts, job.ends, job.duration)
        )
