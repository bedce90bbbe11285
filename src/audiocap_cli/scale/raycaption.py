"""Captioning on a Ray cluster with Ray Data (Ray with its ``data`` and ``client`` extras).

:func:`caption_dataset` takes a ``ray.data.Dataset`` of paths and returns one of records:
``map_batches`` over a pool of actors, each of which loads the model once (a
:class:`~audiocap_cli.pipeline.captioner.Captioner`) and captions its batches exactly as the
single-process ``caption_files`` does. A file that cannot be used, or a batch that raises,
becomes error records; nothing kills the job::

    import ray
    from audiocap_cli.scale.raycaption import caption_dataset, write_jsonl

    ray.init()                                     # on a cluster node: ray.init("auto")
    paths = ray.data.read_text("paths.txt")        # one path per line: column "text"
    out = caption_dataset(paths, "/shared/model", workers=8, column="text")
    write_jsonl(out, "captions.jsonl")             # or: for recs in iter_records(out): ...

Ray Data needs its driver inside the cluster: it does not run over Ray Client (``ray://``).
:func:`caption_paths` (what ``audiocap caption --ray`` uses) does work over Ray Client: there
the Ray Data pipeline runs in a relay actor on the cluster and only records travel back.

The model directory, the audio files and (for reuse) ``$AUDIOCAP_CACHE`` must be readable at
the same paths on every node (a shared file system); audiocap must be installed on every node.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudiocapError, UsageError
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

#: Seconds each connection check may wait (TCP connect, gRPC handshake, one RPC): an address
#: that is refused, unreachable or not Ray fails in at most three times this.
PROBE_TIMEOUT_S = 5.0

#: Files per round trip between a Ray Client driver and its relay actor.
RELAY_CHUNK = 32

ADDRESS_FORMS = "local, auto, ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS port)"
AUTH_HINT = (
    "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
    "~/.ray/auth_token; `ray get-auth-token` prints it on the head)"
)


def _error_records(paths: Sequence[str], exc: BaseException) -> list[list[dict[str, Any]]]:
    cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return [[CaptionRecord.failure(p, cause, type(exc).__name__).to_json()] for p in paths]


def actor_id() -> str:
    """``host:pid`` of this process: each output row names the actor that captioned it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class CaptionActor:
    """A Ray Data actor: loads the model once, then captions batches of paths.

    Output columns: ``path``, ``jsonl`` (the file's records, one JSON line each, as
    ``audiocap caption`` writes them), ``failed`` (the file became an error record) and
    ``actor`` (``host:pid`` of the actor that captioned it).
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
            "actor": np.array([actor_id()] * len(paths), dtype=object),
        }


def resolve_model(model: str | Path | None) -> str:
    """The model folder the actors load, as the CLI's ``-m`` resolves it (a folder or a name from
    ``audiocap models``; None: $AUDIOCAP_MODEL, else the default), resolved on the driver: a
    name is built into ``$AUDIOCAP_CACHE`` once, and the workers get an absolute path."""
    from ..pipeline.registry import resolve

    return str(resolve(model, check=True).absolute())


def caption_dataset(
    ds: Any,
    model: str | Path | None,
    opts: CaptionOptions = CaptionOptions(),
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    column: str = "path",
) -> Any:
    """Caption a ``ray.data.Dataset`` whose ``column`` holds audio paths; returns a lazy Dataset
    with columns ``path``, ``jsonl``, ``failed`` and ``actor`` (see :class:`CaptionActor`).

    ``model`` is a model folder or name, as ``audiocap caption -m`` takes (resolved here, on the
    driver). ``workers`` actors (a fixed pool), each reserving ``cpus_per_worker`` CPUs (torch
    uses as many threads) and ``gpus_per_worker`` GPUs (> 0 runs the model on ``cuda``).
    Batches hold ``opts.batch_size`` files, as in the single-process run.

    The paths are read first (``ds`` is materialised: a column of strings): a pool that takes
    every CPU of the cluster would otherwise leave none to the read tasks that feed it, and
    wait for ever. The records come in input order.
    """
    model_dir = resolve_model(model)
    check_fits(cpus_per_worker, gpus_per_worker)
    if column != "path":
        ds = ds.rename_columns({column: "path"})
    _keep_order(ds)  # read tasks finish in any order: the materialised blocks keep the input's
    ds = ds.materialize()
    if gpus_per_worker > 0 and opts.device == "cpu":
        opts = replace(opts, device="cuda")
    threads = max(1, int(cpus_per_worker)) if cpus_per_worker >= 1 else 1
    import ray.data

    out = ds.map_batches(
        CaptionActor,
        fn_constructor_args=(model_dir, opts, threads),
        batch_size=max(1, opts.batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )
    _keep_order(out)
    return out


def _keep_order(ds: Any) -> None:
    """Records in input order, as `audiocap caption` writes them: set on the dataset's own
    context where Ray has one (the caller's current DataContext stays as it was)."""
    import ray.data

    ctx = getattr(ds, "context", None)
    (
        ctx if ctx is not None else ray.data.DataContext.get_current()
    ).execution_options.preserve_order = True


def check_fits(cpus_per_worker: float, gpus_per_worker: float = 0.0) -> None:
    """A :class:`UsageError` where no live node of the cluster has the CPUs and GPUs of one actor
    (an actor runs on one node): its pool would wait for ever. A pool larger than the cluster
    is fine: Ray Data captions with the actors that fit."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(
        r.get("CPU", 0) >= cpus_per_worker and r.get("GPU", 0) >= gpus_per_worker for r in nodes
    ):
        return
    most = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    raise UsageError(
        f"an actor needs {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs on one node "
        f"(--cpus-per-worker, --gpus-per-worker), and no node of the Ray cluster has them (the "
        f"largest: {most.get('CPU', 0):g} CPUs, {most.get('GPU', 0):g} GPUs)"
    )


def iter_records(out: Any, actors: set[str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """The records of each file of a :func:`caption_dataset` result, as they arrive; the actors
    that captioned them are added to ``actors``."""
    for row in out.iter_rows():
        if actors is not None and "actor" in row:
            actors.add(str(row["actor"]))
        yield [json.loads(line) for line in str(row["jsonl"]).splitlines()]


def write_jsonl(out: Any, path: str | Path) -> tuple[int, int]:
    """Write a :func:`caption_dataset` result as ``audiocap caption -o path`` does (one flushed
    write per file, on the driver); returns (captioned, failed)."""
    from ..pipeline.captioner import write_records
    from ..pipeline.records import RecordWriter

    with RecordWriter(str(path)) as writer:
        return write_records(iter_records(out), writer)


def _host_port(address: str) -> tuple[str, int]:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in rest:
        raise UsageError(f"--ray {address}: not an address; expected {ADDRESS_FORMS}")
    return host.strip("[]"), int(port)


def _auth_metadata() -> tuple[tuple[str, str], ...]:
    """The token header Ray itself would send (RAY_AUTH_MODE=token), or none."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return ()
    try:
        from ray._raylet import AuthenticationTokenLoader  # Ray >= 2.52

        loader = AuthenticationTokenLoader.instance()
        if not loader.has_token():
            return ()
        return tuple(loader.get_token_for_http_header().items())
    except Exception:  # noqa: BLE001 - an older or changed Ray: let ray.init say
        return ()


def probe(address: str, timeout: float | None = None, given: str | None = None) -> None:
    """Fail fast, with one line, where ``ray.init(address)`` would hang or print pages: the
    address refuses connections, does not answer, is not a Ray service, or wants a token that is
    missing or wrong. ``address``: ``ray://HOST:PORT`` (the Ray Client server) or ``HOST:PORT``
    (the head's GCS). Raises :class:`UsageError`; returns when Ray may connect. ``timeout``:
    each step's, :data:`PROBE_TIMEOUT_S` by default; ``given``: the --ray value the messages
    name (``auto (HOST:PORT)``), else ``address``."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    host, port = _host_port(address)
    client = address.startswith("ray://")
    address = given or address
    what = "Ray Client server" if client else "Ray head (GCS)"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UsageError(f"--ray {address}: cannot connect: {why}") from None
    try:
        import grpc
    except ImportError:  # Ray without its client extra: ray.init says the rest
        return
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            port_hint = "10001 by default" if client else "6379 by default"
            raise UsageError(
                f"--ray {address}: no {what} answers there (its port is {port_hint})"
            ) from None
        # A method every Ray >= 2.9 serves there: the server checks the token before anything
        # else, and a server without the method is no Ray service. The Ray Client server gets a
        # PING (ClusterInfoRequest type 6, serialised by hand), which it answers itself.
        method, request = (
            ("/ray.rpc.RayletDriver/ClusterInfo", b"\x08\x06")
            if client
            else ("/ray.rpc.NodeInfoGcsService/GetClusterId", b"")
        )
        try:
            channel.unary_unary(method)(request, timeout=timeout, metadata=_auth_metadata())
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UsageError(
                    f"--ray {address}: the service there is not a {what} (it lacks {method})"
                ) from None
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                    raise UsageError(
                        f"--ray {address}: the cluster rejected this token; {AUTH_HINT}"
                    ) from None
                raise UsageError(
                    f"--ray {address}: the cluster requires token authentication: {AUTH_HINT}"
                ) from None


def _auto_address() -> str:
    """The address ``ray.init("auto")`` would use: $RAY_ADDRESS, else the cluster started on this
    node with ``ray start``."""
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise UsageError(
            "--ray auto: no Ray cluster on this node (start one with `ray start --head`, set "
            "RAY_ADDRESS, or use --ray local)"
        ) from None
    return str(found)


def _configure_data(quiet: bool) -> None:
    """Ray Data settings of this driver (the CLI's process, or a relay actor)."""
    import logging

    import ray.data

    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    # A failed job's stack trace (pages of Ray internals): caption_paths turns the error into
    # one line that names its cause.
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records come back in input order
    ctx.enable_progress_bars = not quiet
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = not quiet


def init(address: str, num_cpus: int | None = None, quiet: bool = False) -> None:
    """Connect to Ray. ``local`` starts a private instance on this machine (``num_cpus``, no
    dashboard), whatever else runs there; ``auto`` joins the cluster this node belongs to (``ray
    start`` / ``RAY_ADDRESS``); ``ray://HOST:PORT`` connects through Ray Client; ``HOST:PORT``
    joins a cluster by its head's GCS address (the driver then runs on this machine, which must
    be reachable from the cluster).

    A cluster that cannot be used (refused, unreachable, not Ray, a missing or wrong token) is a
    :class:`UsageError` of one line, raised within about 3 x :data:`PROBE_TIMEOUT_S`."""
    import ray

    if address != "local":
        target = _auto_address() if address == "auto" else address
        if target != "auto":
            probe(target, given=None if target == address else f"{address} ({target})")
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    kw: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": not quiet,
        "logging_level": "ERROR",
    }
    try:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (
            f" (if the cluster uses token authentication: {AUTH_HINT})"
            if address != "local"
            else ""
        )
        raise UsageError(f"--ray {address}: {first}{hint}") from None
    if not client_mode():
        _configure_data(quiet)


def client_mode() -> bool:
    """Whether this process is a Ray Client driver (``ray://``), where Ray Data cannot run."""
    try:
        from ray.util.client import ray as client_ray

        return bool(client_ray.is_connected())
    except ImportError:
        return False


class _Relay:
    """Runs :func:`caption_dataset` on the cluster for a Ray Client driver, which fetches the
    rows in chunks (Ray Data's driver must be a process of the cluster)."""

    def __init__(
        self,
        paths: list[str],
        model_dir: str,
        opts: CaptionOptions,
        workers: int,
        cpus: float,
        gpus: float,
        quiet: bool,
    ) -> None:
        _configure_data(quiet)
        self.rows = iter(_caption_ds(paths, model_dir, opts, workers, cpus, gpus).iter_rows())

    def next_chunk(self, n: int) -> list[tuple[str, str]]:
        out = []
        for row in self.rows:
            out.append((str(row["jsonl"]), str(row["actor"])))
            if len(out) >= n:
                break
        return out


def _caption_ds(
    paths: Sequence[str],
    model_dir: str,
    opts: CaptionOptions,
    workers: int,
    cpus: float,
    gpus: float,
) -> Any:
    import ray.data

    blocks = max(1, min(len(paths), 4 * workers, -(-len(paths) // max(1, opts.batch_size))))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    return caption_dataset(ds, model_dir, opts, workers, cpus, gpus)


def _relayed(
    paths: Sequence[str],
    model_dir: str,
    opts: CaptionOptions,
    workers: int,
    cpus: float,
    gpus: float,
    quiet: bool,
    actors: set[str] | None,
) -> Iterator[list[dict[str, Any]]]:
    import ray

    relay = ray.remote(num_cpus=0)(_Relay).remote(
        list(paths), model_dir, opts, workers, cpus, gpus, quiet
    )
    try:
        pending = relay.next_chunk.remote(RELAY_CHUNK)
        while True:
            chunk = ray.get(pending)
            if not chunk:
                return
            pending = relay.next_chunk.remote(
                RELAY_CHUNK
            )  # the next chunk while this one is written
            for jsonl, actor in chunk:
                if actors is not None:
                    actors.add(actor)
                yield [json.loads(line) for line in jsonl.splitlines()]
    finally:
        ray.kill(relay)


def _ray_failure(e: BaseException) -> AudiocapError:
    """One line for a failure of the Ray job itself (not of a file): the cause raised in the
    cluster where Ray kept it (an AudiocapError keeps its class and exit status)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, AudiocapError):
        return cause
    if cause is not None:
        e = cause
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return AudiocapError(f"the Ray job failed: {type(e).__name__}: {lines[-1] if lines else ''}")


def caption_paths(
    paths: Sequence[str],
    model: str | Path | None,
    opts: CaptionOptions,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    quiet: bool = True,
    actors: set[str] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Records of each of ``paths`` (in order) captioned by a Ray actor pool (Ray initialised,
    directly or through Ray Client); the actors that did the work are added to ``actors``."""
    import ray

    if not paths:
        return
    model_dir = resolve_model(model)
    try:
        if client_mode():
            yield from _relayed(
                paths, model_dir, opts, workers, cpus_per_worker, gpus_per_worker, quiet, actors
            )
        else:
            ds = _caption_ds(paths, model_dir, opts, workers, cpus_per_worker, gpus_per_worker)
            yield from iter_records(ds, actors)
    except ray.exceptions.RayError as e:
        raise _ray_failure(e) from None


def caption_files(
    paths: Sequence[str],
    model: str | Path | None,
    opts: CaptionOptions,
    writer: Any,
    workers: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    advance: Any = None,
    on_error: Any = None,
    quiet: bool = True,
    actors: set[str] | None = None,
) -> tuple[int, int]:
    """:func:`audiocap_cli.pipeline.captioner.caption_files` on Ray: the same records through the
    same ``RecordWriter`` (so ``--resume`` works alike); returns (captioned, failed). Each file
    is captioned whole by one actor: a windows-mode file that a resumed output holds some
    windows of is captioned again, and the writer leaves out the windows it holds."""
    from ..pipeline.captioner import pending, write_records

    todo = pending(paths, writer, advance, windows=opts.long_audio == "windows")
    return write_records(
        caption_paths(todo, model, opts, workers, cpus_per_worker, gpus_per_worker, quiet, actors),
        writer,
        advance,
        on_error,
    )
