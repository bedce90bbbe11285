"""Data-parallel training under ``torchrun`` (one process per CPU slot or GPU).

``torchrun --nproc-per-node N -m audiocap_cli train-decoder ...`` sets ``RANK``/``WORLD_SIZE``;
:func:`session` then joins the process group (gloo for CPU tensors, NCCL for CUDA ones) and the
training loops split every global batch between the ranks:

* every rank draws the same permutation and guidance (same seeds), takes its interleaved slice
  of the global batch, and sums gradients over ranks (:func:`all_reduce_grads`); the decoder
  divides each rank's summed token loss by the global token count, so the step equals the
  one-process step of the same global batch;
* the retriever all-gathers the batch embeddings before the triplet mining (:func:`gather_rows`),
  so each rank mines the whole global batch, as one process does;
* rank 0 alone writes checkpoints, ``metrics.jsonl`` and the model files; :func:`rank0_first`
  lets it build caches (features, similarity labels) before the others read them;
* a worker dies with its launcher (:func:`die_with_launcher`): torchrun starts each worker in
  a session of its own, so a launcher killed outright would leave them training on.

Without ``torchrun`` (no ``WORLD_SIZE`` or 1) every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def die_with_launcher() -> None:
    """Under torchrun, make this worker end when its launcher does.

    torchrun's agent starts every worker in a session of its own (``start_new_session``), so a
    launcher that dies without stopping them (``kill -9``, a scheduler's hard timeout, an OOM
    kill) leaves them training, unseen, and a rerun then competes with them. On Linux the
    kernel sends this worker SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``; the
    agent starts the workers from its main thread, which lives as long as it does); elsewhere a
    daemon thread checks the parent pid every second. Checkpoints are written atomically, so
    the kill loses at most the epoch under way. Only for workers of torchrun (which sets
    ``TORCHELASTIC_RUN_ID``): a process started by hand may outlive its shell on purpose.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    # (a launcher dead before this line goes unnoticed here; but its workers then fail to join
    # the process group, whose rendezvous store the agent hosts. No "parent is pid 1" test: in
    # a container torchrun itself may be pid 1.)
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1  # <linux/prctl.h>
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died between getppid and prctl
                os.kill(os.getpid(), signal.SIGKILL)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="audiocap-launcher-watch", daemon=True).start()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Join the process group for the duration of a command when launched by torchrun."""
    if not launched() or active():
        yield
        return
    die_with_launcher()
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    """Run the body on rank 0 first (it fills caches and writes shared files), then on the others."""
    if is_main():
        try:
            yield
        finally:
            barrier()
    else:
        barrier()
        yield


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's interleaved slice of ``items`` (all of them without torchrun)."""
    return items[rank() :: world()] if active() else items


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every gradient over the ranks (one flat buffer; a missing gradient counts as 0)."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_sum(*values: float) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``[n_r, ...]`` rows in rank order; the own rows keep their graph
    (so ``backward`` of a loss over all rows reaches this rank's parameters). ``counts[r]``:
    the rows of rank r."""
    if not active():
        return local
    width = max(counts)
    pad = torch.zeros(
        (width - local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device
    )
    buf = torch.cat([local.detach(), pad])
    parts = [torch.empty_like(buf) for _ in counts]
    dist.all_gather(parts, buf)
    parts = [p[:n] for p, n in zip(parts, counts)]
    parts[rank()] = local
    return torch.cat(parts)


def broadcast_params(module: torch.nn.Module) -> None:
    """Rank 0's trainable parameters to every rank (they start equal from one seed; this makes sure)."""
    if active():
        for p in (p for p in module.parameters() if p.requires_grad):
            dist.broadcast(p.data, 0)


def gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out
