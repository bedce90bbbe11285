"""Captioning on a Ray cluster with Ray Data (the optional extra ``audiocap-cli[ray]``).

:func:`caption_dataset` takes a ``ray.data.Dataset`` of paths and returns one of records:
``map_batches`` over a pool of actors, each of which loads the model once (a
:class:`~audiocap_cli.pipeline.captioner.Captioner`) and captions its batches exactly as the
single-process ``caption_files`` does. A file that cannot be used, or a batch that raises,
becomes error records; nothing kills the job::

    import ray
    from audiocap_cli.scale.raycaption import caption_dataset, write_jsonl

    ray.init()                                     # or ray.init("ray://head:10001")
    paths = ray.data.read_text("paths.txt")        # one path per line: column "text"
    out = caption_dataset(paths, "/shared/model", workers=8, column="text")
    write_jsonl(out, "captions.jsonl")             # or: for recs in iter_records(out): ...

The model directory, the audio files and (for reuse) ``$AUDIOCAP_CACHE`` must be readable at
the same paths on every node (a shared file system); audiocap must be installed on every node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline.captioner import CaptionOptions
from ..pipeline.records import CaptionRecord

# Environment forwarded to the workers (cache location, quiet libraries).
FORWARD_ENV = (
    "AUDIOCAP_CACHE",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TRANSFORMERS_VERBOSITY",
    "TQDM_DISABLE",
    "HF_HUB_OFFLINE",
    "HF_HOME",
)


def _error_records(paths: Sequence[str], exc: BaseException) -> list[list[dict[str, Any]]]:
    cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return [[CaptionRecord.failure(p, cause, type(exc).__name__).to_json()] for p in paths]


class CaptionActor:
    """A Ray Data actor: loads the model once, then captions batches of paths.

    Output columns: ``path``, ``jsonl`` (the file's records, one JSON line each, as
    ``audiocap caption`` writes them) and ``failed`` (the file became an error record).
    """

    def __init__(self, model_dir: str, opts: CaptionOptions, threads: int | None = None) -> None:
        import torch

        from ..pipeline.captioner import Captioner

        if threads:
            torch.set_num_threads(threads)
        self.captioner = Captioner(model_dir, opts)

    def records(self, paths: list[str]) -> list[list[dict[str, Any]]]:
        """Records of each path; a batch that raises is retried file by file."""
        try:
            return self.captioner.caption_batch(paths)
        except Exception as e:  # noqa: BLE001 - a bad batch must not kill the job
            if len(paths) == 1:
                return _error_records(paths, e)
            return [self.records([p])[0] for p in paths]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        recs = self.records(paths)
        lines = ["".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs) for rs in recs]
        return {
            "path": np.array(paths, dtype=object),
            "jsonl": np.array(lines, dtype=object),
            "failed": np.array([bool(rs) and "error" in rs[0] for rs in recs], dtype=bool),
        }


def caption_dataset(
    ds: Any,
    model_dir: str | Path,
    opts: CaptionOptions = CaptionOptions(),
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    column: str = "path",
) -> Any:
    """Caption a ``ray.data.Dataset`` whose ``column`` holds audio paths; returns a lazy Dataset
    with columns ``path``, ``jsonl`` and ``failed`` (see :class:`CaptionActor`).

    ``workers`` actors (a fixed pool), each reserving ``cpus_per_worker`` CPUs (torch uses as
    many threads) and ``gpus_per_worker`` GPUs (> 0 runs the model on ``cuda``). Batches hold
    ``opts.batch_size`` files, as in the single-process run.
    """
    if column != "path":
        ds = ds.rename_columns({column: "path"})
    if gpus_per_worker > 0 and opts.device == "cpu":
        opts = replace(opts, device="cuda")
    threads = max(1, int(cpus_per_worker)) if cpus_per_worker >= 1 else 1
    import ray.data

    return ds.map_batches(
        CaptionActor,
        fn_constructor_args=(str(Path(model_dir).absolute()), opts, threads),
        batch_size=max(1, opts.batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )


def iter_records(out: Any) -> Iterator[list[dict[str, Any]]]:
    """The records of each file of a :func:`caption_dataset` result, as they arrive."""
    for row in out.iter_rows():
        yield [json.loads(line) for line in str(row["jsonl"]).splitlines()]


def write_jsonl(out: Any, path: str | Path) -> tuple[int, int]:
    """Write a :func:`caption_dataset` result as ``audiocap caption -o path`` does (one flushed
    write per file, on the driver); returns (captioned, failed)."""
    from ..pipeline.captioner import write_records
    from ..pipeline.records import RecordWriter

    with RecordWriter(str(path)) as writer:
        return write_records(iter_records(out), writer)


def init(address: str, num_cpus: int | None = None, quiet: bool = False) -> None:
    """Connect to Ray: ``local`` starts a private instance on this machine (``num_cpus``, no
    dashboard); ``auto`` joins the cluster this node belongs to (``ray start`` / ``RAY_ADDRESS``);
    anything else is an address such as ``ray://head:10001``."""
    import ray

    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    kw: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": not quiet,
        "logging_level": "ERROR",
    }
    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kw)
    else:
        ray.init(address=address, **kw)
    if quiet:
        import logging

        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records come back in input order
    ctx.enable_progress_bars = not quiet
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = not quiet


def caption_paths(
    paths: Sequence[str],
    model_dir: str | Path,
    opts: CaptionOptions,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> Iterator[list[dict[str, Any]]]:
    """Records of each of ``paths`` (in order) captioned by a Ray actor pool (Ray initialised)."""
    import ray

    if not paths:
        return iter(())
    blocks = max(1, min(len(paths), 4 * workers, -(-len(paths) // max(1, opts.batch_size))))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    return iter_records(
        caption_dataset(ds, model_dir, opts, workers, cpus_per_worker, gpus_per_worker)
    )


def caption_files(
    paths: Sequence[str],
    model_dir: str | Path,
    opts: CaptionOptions,
    writer: Any,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    advance: Any = None,
    on_error: Any = None,
) -> tuple[int, int]:
    """:func:`audiocap_cli.pipeline.captioner.caption_files` on Ray: the same records through the same
    ``RecordWriter`` (so ``--resume`` works alike); returns (captioned, failed)."""
    from ..pipeline.captioner import pending, write_records

    todo = pending(paths, writer, advance)
    return write_records(
        caption_paths(todo, model_dir, opts, workers, cpus_per_worker, gpus_per_worker),
        writer,
        advance,
        on_error,
    )
