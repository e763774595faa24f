"""The style gates run with the tests, so CI enforces them: ruff (E, F, I, B, PIE), mypy on the packages, and the
import layers as pyproject.toml's [tool.importlinter] contracts declare them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layer_contracts_are_kept() -> None:
    """The layers top to bottom (bot.cli, sandbox, bot.app, handlers, bot.incidents, bot.slack, bot.slo, bot.infra,
    executors), executors never import Slack, handlers never import sqlalchemy.
    lint-imports also fails when an ignored import no longer exists, so the contracts see real imports."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def _product_graph(*, with_type_checking: bool) -> dict[str, set[str]]:
    import grimp

    graph = grimp.build_graph("bot", "handlers", "executors", "sandbox",
                              exclude_type_checking_imports=not with_type_checking)
    return {m: {i for i in graph.find_modules_directly_imported_by(m) if i.split(".")[0] in
                ("bot", "handlers", "executors", "sandbox")} for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_product_modules() -> None:
    """No module imports itself back through others, counting the imports made only for type checking too (a
    type-only import of the whole bot was how the satellites reached through it)."""
    assert _cycles(_product_graph(with_type_checking=True)) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
