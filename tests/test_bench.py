"""Smoke test of bench/ and scripts/: every script answers ``--help`` (argparse usage, exit 0)
without writing anything, and nothing under bench/ imports from tests/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Scripts, not the modules they share (bench/speed/_fixtures.py).
SCRIPTS = sorted(p for p in ROOT.glob("bench/*/*.py") if not p.name.startswith("_")) + sorted(
    ROOT.glob("scripts/*.py")
)
SOURCES = (".py", ".md", ".toml")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache"}


def _tree() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file of the checkout, the venv and caches left out."""
    out = {}
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in files:
            st = os.stat(os.path.join(top, f))
            out[os.path.relpath(os.path.join(top, f), ROOT)] = (st.st_mtime_ns, st.st_size)
    return out


class HelpRuns:
    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.cwd = {s: tmp.mktemp(s.stem) for s in SCRIPTS}
        self.cache = tmp.mktemp("cache")
        env = {**os.environ, "AUDIOCAP_CACHE": str(self.cache), "OMP_NUM_THREADS": "1"}
        before = _tree()

        def run(script: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(script), "--help"],
                cwd=self.cwd[script],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        # Each start imports torch or numpy: in parallel, the whole set takes a few starts' time.
        with ThreadPoolExecutor(max_workers=4) as pool:
            self.result = dict(zip(SCRIPTS, pool.map(run, SCRIPTS)))
        after = _tree()
        # New files, and changed files other than sources (those are edited by hand, maybe
        # meanwhile): man pages, completions, fixtures, runs/ are what a script could write.
        self.repo_written = sorted(
            k
            for k in before.keys() | after.keys()
            if k not in before or (before.get(k) != after.get(k) and not k.endswith(SOURCES))
        )


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> HelpRuns:
    return HelpRuns(tmp_path_factory)


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) > 10 and ROOT / "scripts" / "gen_docs.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(ROOT)) for s in SCRIPTS])
def test_help_prints_usage_and_writes_nothing(helps: HelpRuns, script: Path) -> None:
    r = helps.result[script]
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()
    assert sorted(p.name for p in helps.cwd[script].iterdir()) == []


def test_help_writes_nothing_into_the_checkout_or_cache(helps: HelpRuns) -> None:
    assert helps.repo_written == []
    assert list(helps.cache.iterdir()) == []


# `sys.path.insert(0, ... "tests")`, `from test_pipeline import ...`, `import _shared`, ...
FROM_TESTS = re.compile(
    r"""sys\.path\.\w+\(.*["']tests["']"""
    r"""|^\s*(from|import)\s+(tests\b|test_\w+|_shared\b|conftest\b)""",
    re.MULTILINE,
)


def test_bench_does_not_import_from_tests() -> None:
    offenders = {
        str(p.relative_to(ROOT)): m.group(0).strip()
        for p in sorted(ROOT.glob("bench/**/*.py"))
        for m in [FROM_TESTS.search(p.read_text(encoding="utf-8"))]
        if m
    }
    assert offenders == {}
