"""At scale: `caption --shard I/N` and `caption --ray` give the single-process records
(a raw-frame index and a tiny-gpt2 decoder on a synthetic dataset, with the real YAMNet).

The Ray tests share one Ray head that this module starts (`ray start --head`: 2 CPUs, token
authentication with a token of its own, a Ray Client port) and stops at the end, whatever
happens. Each test proves that Ray actors did the work: the run names them (host:pid) and they
are not the driver. They skip when Ray is not installed, unless AUDIOCAP_REQUIRE_RAY=1 (CI
installs the extra and sets it)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _shared import make_workspace
from test_pipeline import cli, env  # noqa: F401 - fixtures, one instance per module

pytestmark = pytest.mark.slow
# One file per batch: batching changes float rounding in padded attention, which can flip a
# near-tie in the beam search of an untrained decoder; runs that batch alike agree bit for bit.
ARGS = ("--beam-size", "2", "--max-len", "8", "--batch-size", "1", "-q")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the synthetic dataset: it adds a broken file to the audio."""
    return make_workspace(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def setup(workspace: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    """The synthetic dataset, a raw-frame index and a tiny-gpt2 decoder, and one file that is
    not audio."""
    m = workspace / "scale_model"
    cli("build-index", str(workspace), "-m", str(m), "--raw", "-q", env=env)
    cli(
        "train-decoder",
        str(workspace),
        "-m",
        str(m),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "-q",
        env=env,
    )
    (workspace / "audio" / "broken.wav").write_bytes(b"RIFF not really")
    return m, sorted(str(p) for p in (workspace / "audio").glob("*.wav"))


def _lines(text: str) -> list[str]:
    """Records without their timings, as a sorted list of lines."""
    return sorted(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"})
        for line in text.splitlines()
    )


@pytest.fixture(scope="module")
def single(setup: tuple[Path, list[str]], env: dict[str, str]) -> str:
    m, files = setup
    r = cli("caption", str(m.parent / "audio"), "-m", str(m), *ARGS, env=env, check=False)
    assert r.returncode == 1 and "broken.wav" in r.stderr  # one bad file, the others captioned
    assert len(r.stdout.splitlines()) == len(files)
    return r.stdout


def test_shards_equal_unsharded_run(
    setup: tuple[Path, list[str]], env: dict[str, str], single: str, tmp_path: Path
) -> None:
    m, files = setup
    outs = []
    for i in (1, 2):
        out = tmp_path / f"part_{i}.jsonl"
        # shard 2 is given the files in reverse order: the partition is by path, not position
        inputs = files if i == 1 else files[::-1]
        cli(
            "caption",
            *inputs,
            "-m",
            str(m),
            "--shard",
            f"{i}/2",
            "-o",
            str(out),
            "--resume",
            *ARGS,
            env=env,
            check=False,
        )
        outs.append(out)
    parts = [_lines(o.read_text()) for o in outs]
    assert parts[0] and parts[1] and _lines(single) == sorted(parts[0] + parts[1])
    r = cli("merge", *map(str, outs), "--expect", str(m.parent / "audio"), env=env)
    assert _lines(r.stdout) == _lines(single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ray start exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no Ray head on port {port} after {seconds} s")


def _stop_with_parent() -> None:
    """In the child: SIGINT when pytest dies, however it dies (a killed pytest runs no
    teardown). `ray start --block` stops its cluster on SIGINT, and Ray ties its processes to
    it. Linux only; elsewhere the teardown alone stops the head."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def ray_head(env: dict[str, str]) -> Iterator[dict[str, object]]:
    """A Ray head for this module: 2 CPUs, token authentication with its own token (the user's
    ~/.ray/auth_token is neither read nor written), a Ray Client port. Its temp dir is short
    (Ray's socket paths must fit 107 bytes) and private; it is stopped at the end, whatever
    happens (SIGINT to `ray start --block`, then SIGKILL to its process group)."""
    if os.environ.get("AUDIOCAP_REQUIRE_RAY") != "1":
        pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, client = _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    token = secrets.token_hex(16)
    head_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # The Ray Client server starts a server per client; on a loaded machine that took minutes
    # (its default wait is 30 s, then the connection fails).
    head_env["RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S"] = "300"
    head_env.pop("RAY_ADDRESS", None)
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--port",
        str(gcs),
        "--ray-client-server-port",
        str(client),
        "--dashboard-port",
        str(_free_port()),
        "--include-dashboard=false",
        "--num-cpus",
        "2",
        "--temp-dir",
        str(tmp),
        "--disable-usage-stats",
    ]
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen(
        cmd,
        env=head_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_stop_with_parent,
    )
    try:
        _wait_port(gcs, proc, 90)
        _wait_port(client, proc, 90)
        yield {
            "gcs": f"127.0.0.1:{gcs}",
            "client": f"ray://127.0.0.1:{client}",
            "env": head_env,
            "tmp": tmp,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the graceful stop left
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _head_worker_pids(ray_head: dict[str, object]) -> set[int]:
    """The pids of the worker processes the head's raylet started (from their log names)."""
    tmp = Path(str(ray_head["tmp"]))
    return {
        int(m.group(1))
        for f in tmp.glob("session_*/logs/python-core-worker-*.log")
        if (m := re.search(r"_(\d+)\.log$", f.name))
    }


def _ray_cli(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, set[int]]:
    """`audiocap caption ... --ray ...` (not -q: the run names its actors) and the pids of the
    actors that did its work, none of which may be the driver's own."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiocap_cli", "caption", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    m = re.search(r"audiocap: ray: \d+ files on (\d+) actors: (.*)", err)
    assert m, err[-3000:]
    pids = {int(a.rsplit(":", 1)[1]) for a in m.group(2).split(", ")}
    assert len(pids) == int(m.group(1)) >= 1 and proc.pid not in pids
    return r, pids


def test_ray_local_is_private_and_equals_single_process(
    setup: tuple[Path, list[str]],
    env: dict[str, str],
    single: str,
    tmp_path: Path,
    ray_head: dict[str, object],
) -> None:
    """`--ray local` starts its own instance even with a cluster running and RAY_ADDRESS set to
    it; a pool of two actors captions the files in input order, as one process does."""
    m, files = setup
    out = tmp_path / "ray.jsonl"
    r, pids = _ray_cli(
        str(m.parent / "audio"),
        "-m",
        str(m),
        "--ray",
        "local",
        "--workers",
        "2",
        "-o",
        str(out),
        *ARGS[:-1],
        env={**env, "RAY_ADDRESS": str(ray_head["gcs"])},
    )
    # the broken file is an error record, and the job goes on
    assert r.returncode == 1, r.stderr[-3000:]
    assert _lines(out.read_text()) == _lines(single)
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == files
    # at most the pool's two (one may finish before the other has loaded), none of the head's
    assert len(pids) <= 2 and not pids & _head_worker_pids(ray_head)


def test_ray_client_equals_single_process(
    setup: tuple[Path, list[str]],
    single: str,
    tmp_path: Path,
    ray_head: dict[str, object],
) -> None:
    """`--ray ray://HOST:PORT` (Ray Client, token authentication): the actor that captions is a
    worker of the head's cluster, and the records are those of one process."""
    m, files = setup
    out = tmp_path / "client.jsonl"
    r, pids = _ray_cli(
        *files,
        "-m",
        str(m),
        "--ray",
        str(ray_head["client"]),
        "--workers",
        "1",
        "-o",
        str(out),
        *ARGS[:-1],
        env=ray_head["env"],  # type: ignore[arg-type]
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert _lines(out.read_text()) == _lines(single)
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == files
    assert len(pids) == 1 and pids <= _head_worker_pids(ray_head)  # a worker of the head


def test_ray_python_api_fills_the_cluster_without_deadlock(
    setup: tuple[Path, list[str]],
    single: str,
    tmp_path: Path,
    ray_head: dict[str, object],
) -> None:
    """The README's Python API on the head (joined by its GCS address): a pool that takes every
    CPU of the cluster (1 actor x 2 CPUs) still gets the paths that read_text reads, and the
    model is given as a relative path, resolved on the driver."""
    m, files = setup
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f + "\n" for f in files))
    out = tmp_path / "api.jsonl"
    script = f"""
import ray
from audiocap_cli.pipeline.captioner import CaptionOptions
from audiocap_cli.generation.decoding import DecodingOptions
from audiocap_cli.scale.raycaption import caption_dataset, write_jsonl

ray.init({str(ray_head["gcs"])!r}, log_to_driver=False)
paths = ray.data.read_text({str(listing)!r})
opts = CaptionOptions(DecodingOptions(beam_size=2, max_len=8), batch_size=1)
out = caption_dataset(paths, {m.name!r}, opts, workers=1, cpus_per_worker=2, column="text")
print(write_jsonl(out, {str(out)!r}))
"""
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=m.parent,
        env=ray_head["env"],  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-2:] == [f"({len(files) - 1},", "1)"]
    assert _lines(out.read_text()) == _lines(single)
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == files


def test_ray_cluster_wanting_a_token_is_one_line(
    setup: tuple[Path, list[str]], env: dict[str, str], ray_head: dict[str, object]
) -> None:
    """A cluster with token authentication, joined without RAY_AUTH_MODE=token: one line that
    says what to set, exit status 2, at once."""
    m, files = setup
    t = time.monotonic()
    r = cli("caption", files[0], "-m", str(m), "--ray", str(ray_head["gcs"]), env=env, check=False)
    assert r.returncode == 2 and time.monotonic() - t < 30
    assert r.stderr.count("\n") == 1 and "RAY_AUTH_MODE=token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_torchrun_train_decoder_cli(
    setup: tuple[Path, list[str]], env: dict[str, str], tmp_path: Path
) -> None:
    """`torchrun -m audiocap_cli train-decoder`: rank 0 fills the caches first, writes alone,
    and holds the model folder. (That the ranks' gradients are summed, and that a run killed
    mid-epoch resumes: tests/test_distributed.py, with dropout 0, which this command lacks.)"""
    m, _ = setup
    m2 = tmp_path / "model"
    shutil.copytree(m, m2, ignore=shutil.ignore_patterns("decoder"))
    lock = m2 / ".audiocap.lock"  # copied with m: the pid of the run that trained m
    copied = lock.read_text().strip() if lock.exists() else ""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "audiocap_cli",
        "train-decoder",
        str(m.parent),
        "-m",
        str(m2),
        "--lm",
        "tiny-gpt2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "-q",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [
        json.loads(line) for line in (m2 / "decoder" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in rows] == [1, 2] and (
        m2 / "decoder" / "decoder.safetensors"
    ).is_file()
    assert r.stderr.count("decoder: ") == 1  # rank 0 reports
    held = (m2 / ".audiocap.lock").read_text().strip()
    assert held.isdigit() and held != copied  # rank 0's pid: the run held m2
