"""The project's modules import one another in one direction: no import cycle, counting the imports made inside
functions too (a lazy import hides a cycle at start-up but keeps the two modules tied)."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SKIP = {".venv", "tests", "logs", "data", "docs", "shared"}


def project_modules() -> dict[str, Path]:
    """Dotted module name → file, for every project .py file outside tests."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in SKIP:
            mods[".".join(rel.with_suffix("").parts).removesuffix(".__init__")] = path
    return mods


def imported(path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules that `path` imports anywhere in its code (`import a.b`, `from a import b`, `from a.b import c`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {m for m in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if m in mods}
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of a directed graph."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_hand_made_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(c for c in strongly_connected(graph) if len(c) > 1) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    mods = project_modules()
    assert {"train", "network", "model.aggregations", "training.mining", "cli.static_names"} <= set(mods)
    graph = {m: imported(p, mods) - {m} for m, p in mods.items()}
    assert graph["train"] and "parser" in graph["train"]  # the parse sees real imports
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"
