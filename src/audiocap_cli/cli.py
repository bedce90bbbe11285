"""The ``audiocap`` command line: parse options, call the library, print.

stdout carries data (JSON lines); stderr carries people's messages (progress, warnings,
errors). Library errors (:class:`AudiocapError`) become one ``audiocap: error: ...`` line.
"""
from __future__ import annotations

import sys
from typing import NoReturn

import typer

from . import __version__
from .errors import AudiocapError, NotBuiltError

app = typer.Typer(
    name="audiocap",
    help=(
        "Batch audio captioning guided by retrieved similar captions "
        "(Koizumi et al., 2020). Data on stdout, messages on stderr."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def fatal(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit with ``code``."""
    print(f"audiocap: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"audiocap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batch audio captioning guided by retrieved similar captions."""


def _not_built(what: str) -> NoReturn:
    raise NotBuiltError(f"`audiocap {what}` is not built yet")


@app.command("build-index")
def build_index() -> None:
    """Embed every clip of a dataset split into a persistent hnswlib index of captions."""
    _not_built("build-index")


@app.command("train-retriever")
def train_retriever() -> None:
    """Train the triplet retriever on caption-similarity labels."""
    _not_built("train-retriever")


@app.command("train-decoder")
def train_decoder() -> None:
    """Train the guided decoder on a frozen language model."""
    _not_built("train-decoder")


@app.command("caption")
def caption() -> None:
    """Caption audio files and print one JSON line per clip."""
    _not_built("caption")


@app.command("eval")
def evaluate() -> None:
    """Score captions with BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr."""
    _not_built("eval")


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    try:
        app()
    except AudiocapError as e:
        print(f"audiocap: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("audiocap: interrupted", file=sys.stderr)
        sys.exit(130)
