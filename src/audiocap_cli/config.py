"""Saving, loading and checking the frozen per-stage config dataclasses.

Each stage keeps its own frozen dataclass next to the code that uses it (as whisper keeps
``DecodingOptions`` in ``decoding.py``); this module only turns them into JSON beside every
artefact and checks them on load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .errors import ConfigMismatchError, ModelNotFoundError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, turning lists back into tuples and ignoring unknown keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            continue
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)


def fingerprint(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """A short stable hash of a config, for cache keys and artefact names (``exclude``: fields
    that do not change the artefact)."""
    blob = json.dumps(
        {k: v for k, v in to_dict(cfg).items() if k not in exclude}, sort_keys=True
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(
    tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write torch ``tensors`` (detached, moved to the CPU, contiguous) as one safetensors file,
    atomically (:func:`atomic_write_bytes`). safetensors holds data only: loading it runs no code."""
    from safetensors.torch import save

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def replace_dir(built: str | Path, target: str | Path) -> Path:
    """Make the finished directory ``built`` appear at ``target`` in one atomic step.

    ``target`` becomes a symlink to a versioned sibling ``.<name>.v<random>`` (``built`` is
    moved there); the swap is ``os.replace`` of a symlink, so a reader always finds the old
    version or the new one, never nothing. The previous version is deleted afterwards (readers
    should :func:`Path.resolve` ``target`` once and read through the result; a reader that loses
    the race sees its version vanish and can resolve again). A real directory left at ``target``
    by an older audiocap is moved aside first: that one migration is not atomic.
    """
    built, target = Path(built), Path(target)
    parent = target.parent
    version = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.v"))
    os.replace(built, version)  # an empty directory is replaced by a rename (same filesystem)
    old = target.resolve() if target.is_symlink() else None
    if target.exists() and not target.is_symlink():  # a real directory: the old layout
        old = parent / f".{target.name}.v{os.getpid()}-legacy"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    link = parent / f".{target.name}.{os.getpid()}.link"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)  # relative: the model directory can be moved or copied
    os.replace(link, target)
    if old is not None and old != version.resolve() and old.parent == parent.resolve():
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_config(cfg: Any, path: str | Path, **extra: Any) -> None:
    """Save ``cfg`` as JSON (with its class name and any ``extra`` fields) atomically."""
    payload = {"kind": type(cfg).__name__, "config": to_dict(cfg), **extra}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a config saved by :func:`save_config`; a missing file is a ModelNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: config file not found")
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"{path}: unreadable config ({e})") from e
    if payload.get("kind") != cls.__name__:
        raise ConfigMismatchError(
            f"{path}: holds a {payload.get('kind')!r} config, expected {cls.__name__!r}"
        )
    return from_dict(cls, payload["config"])


def check_config(
    expected: Any, found: Any, what: str, fields: tuple[str, ...] | None = None
) -> None:
    """Raise ConfigMismatchError naming every differing field (all, or only ``fields``)."""
    a, b = to_dict(expected), to_dict(found)
    keys = fields if fields is not None else tuple(sorted(set(a) | set(b)))
    diffs = [
        f"{k}: {b.get(k)!r} (artefact) != {a.get(k)!r} (in use)"
        for k in keys
        if a.get(k) != b.get(k)
    ]
    if diffs:
        raise ConfigMismatchError(f"{what} was built with a different config: " + "; ".join(diffs))


def file_sha256(*files: str | Path | BinaryIO) -> str:
    """Full sha256 hex digest of the bytes of ``files`` (paths, or binary files open at their
    start), in order, streamed in 1 MiB reads (no Python overhead to speak of, yet cache-sized);
    callers wanting a short id take ``[:16]``."""
    h = hashlib.sha256()
    for f in files:
        with contextlib.ExitStack() as stack:
            fh = f if hasattr(f, "read") else stack.enter_context(open(f, "rb"))  # type: ignore[arg-type]
            while chunk := fh.read(1 << 20):  # type: ignore[union-attr]
                h.update(chunk)
    return h.hexdigest()
