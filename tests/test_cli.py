"""The command line as a user meets it: help, version, one-line errors, exit codes."""
import subprocess
import sys

import pytest

SUBCOMMANDS = ("build-index", "train-retriever", "train-decoder", "caption", "eval")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args], capture_output=True, text=True, input=stdin, timeout=300
    )


def test_help_lists_subcommands() -> None:
    r = run("--help")
    assert r.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in r.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(sub: str) -> None:
    r = run(sub, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and len(r.stdout.splitlines()) > 5


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("audiocap ")


def test_library_imports_without_cli_deps() -> None:
    code = (
        "import sys; sys.modules['typer'] = None; sys.modules['rich'] = None\n"
        "import audiocap_cli, audiocap_cli.audio, audiocap_cli.records, audiocap_cli.config\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
