"""How many threads torch computes with: as many as the CPUs this process may use.

torch starts one intra-op thread per core of the machine (``torch.get_num_threads()``). It does
not read a container's CPU quota, a Ray actor's CPU reservation or how many training processes
share the node. More busy threads than CPUs spin in OpenMP barriers while the CPU they wait for
runs another thread, and a run can then slow to a crawl. :func:`configure` picks the count once
per process:

* the CPUs this process may run on (``os.sched_getaffinity``: ``taskset``, Slurm, cpusets),
* capped by the cgroup CPU quota, rounded up (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``: Docker ``--cpus``, Kubernetes CPU limits),
* capped by a budget the caller knows (a Ray actor's ``--cpus-per-worker``),
* divided among the training processes ``torchrun`` starts on this node (``LOCAL_WORLD_SIZE``).

``caption --shard I/N`` is not divided: shards are meant to be array tasks, and each task's CPUs
come from its scheduler's affinity or quota, read above. Shards started side by side on one
machine each see the whole machine; give each ``OMP_NUM_THREADS`` = cores / N.

The user's choice wins: with ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set, torch keeps what it
read from them. Otherwise torch's count is only ever lowered, so a lower
``torch.set_num_threads`` made before audiocap loads is kept.

The functions below all but :func:`configure` are pure (paths and texts in, numbers out) so that
they can be tested on fake cgroup trees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

#: Environment variables by which a user sets torch's thread count himself.
USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")

_chosen: int | None = None  # what configure() set in this process (0: left to the user)


def parse_cpu_max(text: str) -> float | None:
    """CPUs of a cgroup v2 ``cpu.max`` (``"200000 100000"`` -> 2.0); None for ``max`` or junk."""
    parts = text.split()
    if len(parts) < 1 or parts[0] == "max":
        return None
    try:
        quota = float(parts[0])
        period = float(parts[1]) if len(parts) > 1 else 100_000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota: str, period: str) -> float | None:
    """CPUs of cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; None for -1 (no limit)."""
    try:
        q, p = float(quota.strip()), float(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and each folder above it up to ``root`` (limits of a parent cgroup apply to
    its children), plus ``root`` itself: inside a container the process' own cgroup is mounted
    at the root while /proc/self/cgroup may still name the host's path."""
    parts = [p for p in rel.strip().split("/") if p and p != ".."]
    out = [root.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    return out + [root]


def cgroup_cpus(proc_cgroup: str, root: Path = CGROUP_ROOT) -> float | None:
    """The tightest CPU quota over this process' cgroup and its parents, in CPUs; None without
    one. ``proc_cgroup``: the text of /proc/self/cgroup (v2 line ``0::/path``; v1 lines
    ``N:cpu,cpuacct:/path``); ``root``: where the cgroup file systems are mounted."""
    limits: list[float] = []
    for line in proc_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":  # cgroup v2: one unified tree
            for d in _ancestors(root, rel):
                text = _read(d / "cpu.max")
                if text is not None and (cpus := parse_cpu_max(text)) is not None:
                    limits.append(cpus)
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's tree
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = root / mount
                if not base.is_dir():
                    continue
                for d in _ancestors(base, rel):
                    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    if q is not None and p is not None and (cpus := parse_cfs(q, p)) is not None:
                        limits.append(cpus)
                break
    return min(limits) if limits else None


def user_threads(environ: Mapping[str, str]) -> int | None:
    """The thread count the user asked for through :data:`USER_VARIABLES`, or None."""
    for name in USER_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def local_processes(environ: Mapping[str, str]) -> int:
    """Processes of one job sharing this node: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    value = environ.get("LOCAL_WORLD_SIZE", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def choose_threads(
    affinity: int, quota: float | None = None, budget: float | None = None, processes: int = 1
) -> int:
    """Intra-op threads for one of ``processes`` processes that share ``affinity`` CPUs, a CPU
    ``quota`` (rounded up: a 1.5-CPU quota runs 2 threads, as the JVM and Go do) and a caller's
    ``budget`` of CPUs (rounded down, at least 1: a Ray actor's reservation)."""
    cpus = float(max(1, affinity))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    if budget is not None:
        cpus = min(cpus, max(1, math.floor(budget)))
    return max(1, int(cpus) // max(1, processes))


def available_cpus() -> tuple[int, float | None]:
    """(CPUs in this process' affinity mask, the cgroup CPU quota or None), read from the system."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    proc = _read(Path("/proc/self/cgroup"))
    return affinity, cgroup_cpus(proc) if proc else None


def configure(budget: float | None = None) -> int | None:
    """Set torch's intra-op thread count for this process, once (later calls change nothing):
    see the module's docstring. ``budget``: CPUs the caller reserved for this process (a Ray
    actor's). Returns the count set, or None where the user's environment decides."""
    global _chosen
    if _chosen is not None:
        return _chosen or None
    if user_threads(os.environ) is not None:
        _chosen = 0
        return None
    affinity, quota = available_cpus()
    n = choose_threads(affinity, quota, budget, local_processes(os.environ))
    import torch

    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    _chosen = torch.get_num_threads()
    return _chosen
