"""The package's layout rules (docs/architecture.md), read from the source: no import circle,
captioning code never imports training code, and nothing in the package imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "audiocap_cli"


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside functions)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for p in (SRC / PKG).rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_init else parts)] = (p, is_init)
    graph: dict[str, set[str]] = {}
    for name, (path, is_init) in mods.items():
        base = name.split(".") if is_init else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    head = base[: len(base) - node.level + 1]
                    target = ".".join(head + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    cand = f"{target}.{alias.name}"
                    deps.add(cand if cand in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_captioning_code_imports_no_training_or_cli_code() -> None:
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    captioning = ("audio", "text", "retrieval", "generation", "pipeline", "evaluation")
    bad = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if (m.split(".")[1:2] and m.split(".")[1] in captioning and d.startswith(f"{PKG}.training"))
        or (d == f"{PKG}.cli" and m != f"{PKG}.__main__")
    ]
    assert bad == []
