#!/usr/bin/env python3
"""Generate man/ pages and completions/ scripts from the Typer app.

  python scripts/gen_docs.py          write man/audiocap.1, man/audiocap-<cmd>.1, completions/*
  python scripts/gen_docs.py --check  exit 1 if any generated file differs (CI)

Man pages are rendered from the click command tree (help text, options, defaults); the
completion scripts are what Typer prints for ``_AUDIOCAP_COMPLETE=source_<shell> audiocap``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from audiocap_cli import __version__
from audiocap_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026"  # fixed, so regenerating is byte-stable
SHELLS = {"bash": "audiocap.bash", "zsh": "_audiocap", "fish": "audiocap.fish"}


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, and leading dots/quotes that roff reads as requests."""
    out = []
    for line in text.replace("\\", "\\\\").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _options(cmd: Any, ctx: typer.Context) -> list[str]:
    lines: list[str] = []
    for p in cmd.get_params(ctx):
        record = p.get_help_record(ctx)
        if record is None or p.name in {"install_completion", "show_completion"}:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{_esc(names)}\\fR", _esc(help_text or "")]
    return lines


def _arguments(cmd: Any) -> str:
    return " ".join(
        f"{(p.name or '').upper()}..." if p.nargs == -1 else (p.name or "").upper()
        for p in cmd.params
        if getattr(p, "param_type_name", "") == "argument"
    )


def man_page(name: str, cmd: Any, ctx: typer.Context, subcommands: dict[str, Any]) -> str:
    title = name.upper()
    short = (cmd.get_short_help_str(limit=200) or "").rstrip(".")
    lines = [
        f'.TH "{title}" "1" "{DATE}" "audiocap {__version__}" "User Commands"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(short)}",
        ".SH SYNOPSIS",
        f"\\fB{_esc(name.replace('-', ' ', 1) if name != 'audiocap' else name)}\\fR [OPTIONS] "
        + ("COMMAND [ARGS]..." if subcommands else _esc(_arguments(cmd))),
        ".SH DESCRIPTION",
        _esc(cmd.help or ""),
        ".SH OPTIONS",
        *_options(cmd, ctx),
    ]
    if subcommands:
        lines.append(".SH COMMANDS")
        for sub, sc in subcommands.items():
            lines += [".TP", f"\\fB{sub}\\fR", _esc(sc.get_short_help_str(limit=200))]
        lines += [".SH SEE ALSO", ", ".join(f"\\fBaudiocap\\-{s}\\fR(1)" for s in subcommands)]
    else:
        lines += [".SH SEE ALSO", "\\fBaudiocap\\fR(1)"]
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    group = typer.main.get_command(app)
    # typer vendors its own click: duck-type the group rather than import click.
    ctx = typer.Context(group, info_name="audiocap")
    subs = {n: group.commands[n] for n in group.list_commands(ctx)}
    files = {ROOT / "man" / "audiocap.1": man_page("audiocap", group, ctx, subs)}
    for sub, cmd in subs.items():
        files[ROOT / "man" / f"audiocap-{sub}.1"] = man_page(
            f"audiocap-{sub}", cmd, typer.Context(cmd, info_name=sub, parent=ctx), {}
        )
    exe = Path(sys.executable).with_name("audiocap")
    for shell, fname in SHELLS.items():
        env = {**os.environ, "_AUDIOCAP_COMPLETE": f"source_{shell}"}
        out = subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=True).stdout
        files[ROOT / "completions" / fname] = out
    return files


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file differs"
    )
    check = ap.parse_args().check
    stale = []
    for path, text in generated().items():
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(
            "stale generated docs (run python scripts/gen_docs.py): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
