"""The command line as a user meets it: help, version, one-line errors, exit codes."""

import subprocess
import sys

import pytest

SUBCOMMANDS = ("build-index", "train-retriever", "train-decoder", "caption", "eval")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audiocap_cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
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
        "import audiocap_cli, audiocap_cli.audio.io, audiocap_cli.pipeline.records, audiocap_cli.config\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# A bad option value for every command: exit status 2, one line on stderr, no traceback.
BAD_VALUES = [
    ("train-retriever", "data", "-m", "m", "--encoder", "bogus"),
    ("train-retriever", "data", "-m", "m", "--similarity-model", "./no/such/folder"),
    ("train-retriever", "data", "-m", "m", "--encoder-weights", "/no/such/weights.pth"),
    ("train-retriever", "data", "-m", "m", "--epochs", "0"),
    ("build-index", "data", "-m", "m", "--encoder", "bogus"),
    ("build-index", "data", "-m", "m", "--clip-seconds", "0"),
    ("train-decoder", "data", "-m", "m", "--guidance", "bogus"),
    ("train-decoder", "data", "-m", "m", "--audio", "bogus"),
    ("train-decoder", "data", "-m", "m", "--lm", "/no/such/lm"),
    ("bootstrap", "corpus.csv", "-m", "m", "--audio", "frames"),
    ("bootstrap", "corpus.csv", "-m", "m", "--lm", "a/b/c"),
    ("caption", "x.wav", "-m", "m", "--format", "xml"),
    ("caption", "x.wav", "-m", "m", "--long-audio", "bogus"),
    ("caption", "x.wav", "-m", "m", "--beam-size", "0"),
    ("caption", "x.wav", "-m", "m", "--device", "gpu0"),
    ("eval", "-d", "data", "--scope", "bogus"),
    ("eval", "-d", "data", "--beam-size", "many"),
    ("eval", "--split", "test"),  # neither --dataset nor a model that records one
    ("eval", "--split", "test", "-m", "."),  # a model directory that records no dataset
    ("no-such-command",),
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=lambda a: " ".join(a))
def test_bad_option_values_are_one_line_usage_errors(
    args: tuple[str, ...], tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUDIOCAP_MODEL", raising=False)
    r = run(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("audiocap: error: "), (
        r.stderr
    )
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_encoder_choices_match_the_library() -> None:
    from typing import get_args

    from audiocap_cli.audio.encoders import ENCODERS
    from audiocap_cli.cli import EncoderName

    assert set(get_args(EncoderName)) == set(ENCODERS)


def test_caption_defaults_are_the_library_defaults() -> None:
    """`audiocap caption` with no options decodes as CaptionOptions() does (the figures quoted
    for the default are measured through the library)."""
    import typer.main

    from audiocap_cli.cli import app
    from audiocap_cli.pipeline.captioner import CaptionOptions

    params = {p.name: p.default for p in typer.main.get_command(app).commands["caption"].params}
    lib = CaptionOptions()
    assert params["batch_size"] == lib.batch_size
    for name in (
        "beam_size",
        "max_len",
        "no_repeat_ngram",
        "repeat_penalty",
        "select",
        "pool_margin",
    ):
        assert params[name] == getattr(lib.decoding, name), name
