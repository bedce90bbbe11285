"""One writer at a time: :func:`hold_folder` for a training run's model folder, and
:func:`hold_output` for a caption run's output file.

Two runs in one model folder would interleave their epochs in ``metrics.jsonl`` and overwrite
each other's checkpoints; two ``caption -o FILE`` runs would interleave their lines, or one
would go on writing into a file the other's ``--resume`` had replaced. The training commands
hold their ``--model`` folder from their first line, before anything heavy is imported, and
:class:`pipeline.records.RecordWriter` holds its output file from before it reads or opens it,
so a second run fails at once with one line (exit status 2). Imports nothing but the standard
library and the error types.

The locks are ``flock``: the kernel releases one when its holder's process ends, however it
ends, so a killed run leaves nothing that blocks the next. On a file system without ``flock``
(some network mounts) the run goes on unprotected. A child forked without exec shares a lock
while it lives.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".audiocap.lock"  # in a held folder; holds the holder's pid (for the message)


@contextlib.contextmanager
def hold_folder(path: str | Path, what: str = "model folder") -> Iterator[None]:
    """Hold ``path`` (created if need be) for one run: while held, a second :func:`hold_folder`
    of it, from any process, fails at once with a one-line UsageError (exit status 2) naming
    the folder and the holder's pid. The lock file stays in the folder (unlocked) after the
    run; a folder this call created and the run left empty is removed."""
    folder = Path(path)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(f"{what} {folder}: cannot use it: {e.strerror or e}") from None
    try:
        if not _lock(fd):
            raise UsageError(
                f"{what} {folder} is in use by another training run (pid {_holder(fd)}); "
                "wait for it to end, or train into another folder"
            )
        _sign(fd)
        yield
    finally:
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()
                    folder.rmdir()
        os.close(fd)  # releases the lock


def output_lock(path: str | Path) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside the file it names (through a
    symlink; not the file itself, which ``--resume`` replaces)."""
    p = Path(os.path.realpath(path))
    return p.with_name(f".{p.name}.lock")


@contextlib.contextmanager
def hold_output(path: str | Path) -> Iterator[None]:
    """Hold output file ``path`` for one caption run: while held, a second :func:`hold_output`
    of it, from any process, fails at once with a one-line UsageError (exit status 2). The lock
    file (:func:`output_lock`) is removed when the run ends; a killed run's stays, unlocked,
    and the next run takes it over."""
    lock = output_lock(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"-o {path}: cannot lock it: {e.strerror or e}") from None
        if not _lock(fd):
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(
                f"-o {path} is being written by another audiocap run (pid {holder}); wait for "
                "it to end, or write elsewhere"
            )
        # The previous holder may have unlinked the file between our open and our lock: then we
        # hold a lock nobody else can see, and must take the one at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        _sign(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a waiting opener sees the inode change
        os.close(fd)


def _sign(fd: int) -> None:
    """Write this process's pid into the held lock file, for the next one's message."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"


def _lock(fd: int) -> bool:
    """Whether this process now holds ``fd``'s flock; True also without flock (no fcntl, or a
    file system answering ENOLCK, EOPNOTSUPP...): the run then goes unprotected rather than
    not at all."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    return True
