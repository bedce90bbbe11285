"""threads.py: torch's thread count from the CPUs a process may use, on fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiocap_cli import threads
from audiocap_cli.threads import (
    cgroup_cpus,
    choose_threads,
    local_processes,
    parse_cfs,
    parse_cpu_max,
    user_threads,
)


def test_parse_quota_files() -> None:
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("") is None and parse_cpu_max("junk 1") is None
    assert parse_cfs("400000\n", "100000\n") == 4.0
    assert parse_cfs("-1\n", "100000\n") is None and parse_cfs("x", "1") is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_reads_the_tightest_limit_of_the_process_and_its_parents(tmp_path: Path) -> None:
    _write(tmp_path / "job.slice" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "job.slice" / "step_0" / "cpu.max", "max 100000\n")
    assert cgroup_cpus("0::/job.slice/step_0\n", tmp_path) == 3.0
    _write(tmp_path / "job.slice" / "step_0" / "cpu.max", "150000 100000\n")
    assert cgroup_cpus("0::/job.slice/step_0\n", tmp_path) == 1.5
    # a container: its own cgroup mounted at the root, /proc/self/cgroup naming the host's path
    other = tmp_path / "container"
    _write(other / "cpu.max", "200000 100000\n")
    assert cgroup_cpus("0::/docker/abc123\n", other) == 2.0
    assert cgroup_cpus("0::/\n", tmp_path / "nothing") is None  # no cpu.max anywhere: no limit


def test_cgroup_v1_reads_the_cpu_controller(tmp_path: Path) -> None:
    proc = "12:memory:/x\n4:cpu,cpuacct:/kubepods/pod1\n0::/\n"
    d = tmp_path / "cpu,cpuacct" / "kubepods" / "pod1"
    _write(d / "cpu.cfs_quota_us", "250000\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpus(proc, tmp_path) == 2.5
    _write(d / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpus(proc, tmp_path) is None
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "100000\n")  # the parent's limit holds
    _write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpus(proc, tmp_path) == 1.0


def test_choose_threads() -> None:
    assert choose_threads(16) == 16
    assert choose_threads(16, quota=2.0) == 2
    assert choose_threads(16, quota=1.5) == 2  # a quota is rounded up
    assert choose_threads(2, quota=8.0) == 2  # the affinity mask caps the quota
    assert choose_threads(16, budget=4.0) == 4  # a Ray actor's CPUs
    assert choose_threads(16, budget=0.5) == 1  # never 0
    assert choose_threads(16, budget=2.7) == 2  # a budget is rounded down
    assert choose_threads(16, processes=4) == 4  # torchrun's processes on the node
    assert choose_threads(2, processes=3) == 1
    assert choose_threads(0) == 1


def test_environment() -> None:
    assert user_threads({}) is None
    assert user_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert user_threads({"MKL_NUM_THREADS": "2"}) == 2
    assert user_threads({"OMP_NUM_THREADS": ""}) is None
    assert user_threads({"OMP_NUM_THREADS": "0"}) is None
    assert local_processes({}) == 1 and local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4


@pytest.fixture()
def fresh(monkeypatch: pytest.MonkeyPatch):
    """threads.configure as if not yet called in this process; torch's count restored after."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    yield torch
    torch.set_num_threads(before)


def test_configure_lowers_once_and_the_user_wins(fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = fresh
    for name in threads.USER_VARIABLES + ("LOCAL_WORLD_SIZE",):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "available_cpus", lambda: (8, 1.0))
    assert threads.configure() == 1 and torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "available_cpus", lambda: (8, None))
    assert threads.configure() == 1 and torch.get_num_threads() == 1  # once per process
    monkeypatch.setattr(threads, "_chosen", None)
    assert threads.configure(budget=4) == 1  # never raised: a lower count someone set is kept
    monkeypatch.setattr(threads, "_chosen", None)
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "available_cpus", lambda: (1, None))
    assert threads.configure() is None and torch.get_num_threads() == 2  # the user's choice
