"""Ray captioning without a cluster: the actor's batch logic (a failing batch is retried file by
file, and a file that still fails becomes the same error record `audiocap caption` writes), the
model resolved on the driver, and `caption --ray` on an address that cannot be used (refused,
silent, malformed, Ray missing): one line, exit status 2, in bounded time. tests/test_scale.py
runs real Ray jobs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from audiocap_cli.pipeline.records import CaptionRecord
from audiocap_cli.scale.raycaption import CaptionActor


class _FakeCaptioner:
    def caption_batch(self, paths: list[str]) -> list[list[dict[str, Any]]]:
        if "bad.wav" in paths:
            raise ValueError("cannot decode bad.wav\nsecond line")
        return [[{"path": p, "caption": "A dog barks"}] for p in paths]


def test_failing_batch_is_retried_per_file_and_failures_are_error_records() -> None:
    actor = CaptionActor.__new__(CaptionActor)  # skip loading a model
    actor.captioner = _FakeCaptioner()  # type: ignore[assignment]
    out = actor({"path": np.array(["a.wav", "bad.wav", "c.wav"], dtype=object)})
    assert list(out["failed"]) == [False, True, False]
    bad = CaptionRecord.from_json(json.loads(out["jsonl"][1]))
    assert (
        bad.failed
        and bad.error == "ValueError: cannot decode bad.wav"
        and bad.error_type == "ValueError"
    )
    assert '"caption": "A dog barks"' in out["jsonl"][0]


def _needs_ray() -> None:
    if os.environ.get("AUDIOCAP_REQUIRE_RAY") != "1":
        pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")


def _caption_ray(
    address: str, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    """`audiocap caption --ray ADDRESS` on a model folder that is never loaded (the connection
    fails first) and a file that is never read."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    t = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", "caption", str(clip), "-m", str(model)]
        + ["--ray", address, "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "AUDIOCAP_CACHE": str(tmp_path / "cache"), **env},
        timeout=120,
    )
    return r, time.monotonic() - t


def _one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith("audiocap: error: --ray ")
    return r.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.mark.slow  # a CLI start: torch's import
def test_refused_cluster_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _needs_ray()
    r, seconds = _caption_ray(f"127.0.0.1:{_closed_port()}", tmp_path)
    assert "cannot connect: Connection refused" in _one_line(r) and seconds < 30


@pytest.mark.parametrize(
    "address, message",
    [
        ("127.0.0.1:{closed}", "cannot connect: Connection refused"),
        ("ray://127.0.0.1:{closed}", "cannot connect: Connection refused"),
        # accepts connections but never speaks (not Ray): ray.init would retry for minutes
        ("127.0.0.1:{silent}", "no Ray head (GCS) answers there"),
        ("ray://127.0.0.1:{silent}", "no Ray Client server answers there"),
        ("head-without-port", "not an address; expected local, auto"),
        ("ray://head:port", "not an address; expected local, auto"),
        # RAY_ADDRESS names a refused port: `auto` follows it, as ray.init does
        ("auto", "cannot connect: Connection refused"),
    ],
)
def test_unusable_address_fails_fast_with_one_line(
    address: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """raycaption.init on an address it cannot use: a UsageError (exit status 2) of one line,
    within 3 x PROBE_TIMEOUT_S, before ray.init is called."""
    _needs_ray()
    from audiocap_cli.errors import UsageError
    from audiocap_cli.scale import raycaption

    monkeypatch.setattr(raycaption, "PROBE_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = address.format(closed=_closed_port(), silent=silent.getsockname()[1])
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
        t = time.monotonic()
        with pytest.raises(UsageError) as e:
            raycaption.init(address, quiet=True)
    assert time.monotonic() - t < 3 * raycaption.PROBE_TIMEOUT_S + 5
    assert message in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.slow  # a CLI start: torch's import
def test_missing_ray_says_how_to_install_it(tmp_path: Path) -> None:
    """Without Ray (an import that fails, put first on the path), one line names the install."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no ray here')\n")
    r, _ = _caption_ray("local", tmp_path, PYTHONPATH=str(shadow.parent))
    assert "pip install 'ray[data,client]>=2.9'" in _one_line(r)


def test_the_model_is_resolved_on_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """caption_dataset takes a model name or a relative folder as `caption -m` does: the actors
    get the absolute folder that registry.resolve gives on the driver (a name: its cache copy)."""
    _needs_ray()
    from audiocap_cli.pipeline import registry
    from audiocap_cli.scale import raycaption

    built = tmp_path / "cache" / "models" / "audiocaps-labels-0123"
    built.mkdir(parents=True)
    (built / "config.json").write_text("{}")
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "config.json").write_text("{}")
    real = registry.resolve
    monkeypatch.setattr(
        registry, "resolve", lambda m, **kw: built if m == "audiocaps-labels" else real(m, **kw)
    )
    monkeypatch.setattr(raycaption, "check_fits", lambda cpus, gpus: None)  # no cluster here
    monkeypatch.chdir(tmp_path)

    class _Dataset:  # what caption_dataset calls on a ray.data.Dataset
        context = SimpleNamespace(execution_options=SimpleNamespace(preserve_order=False))

        def rename_columns(self, names: dict[str, str]) -> "_Dataset":
            self.renamed = names
            return self

        def materialize(self) -> "_Dataset":
            return self

        def map_batches(self, fn: Any, **kw: Any) -> "_Dataset":
            self.kw = kw
            return self

    for spec, folder in [("audiocaps-labels", built), ("rel", tmp_path / "rel")]:
        out = raycaption.caption_dataset(_Dataset(), spec, workers=2, column="text")
        assert out.kw["fn_constructor_args"][0] == str(folder.absolute())
    assert _Dataset.context.execution_options.preserve_order  # records in input order
    with pytest.raises(registry.ModelSpecError):
        raycaption.caption_dataset(_Dataset(), str(tmp_path / "nowhere"))
