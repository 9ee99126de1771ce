"""The package's layout: no import cycles, and imports point down the layers (docs/model.md, "Architecture").

Every import counts, also one inside a function: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spamtl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each spamtl module -> the modules it imports (spamtl's own, resolved to module names, and others)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        graph[name] = found
    return {name: {m for m in found if m in graph or not m.startswith("spamtl")} for name, found in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among spamtl's modules, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_no_import_cycles() -> None:
    graph = {name: {m for m in found if m.startswith("spamtl")} for name, found in _imports().items()}
    # A package's __init__ re-exporting its modules is not a cycle of design: leave the package -> child edges.
    graph = {name: {m for m in found if not m.startswith(name + ".")} for name, found in graph.items()}
    assert _cycle(graph) == []


# (modules, what they must not import): the lower layers know nothing of the ones above them.
RULES = [
    (("spamtl.model", "spamtl.mail", "spamtl.features"),
     ("sqlalchemy", "typer", "spamtl.settings", "spamtl.store", "spamtl.services", "spamtl.serve", "spamtl.web",
      "spamtl.cli")),
    (("spamtl.store",), ("typer", "spamtl.services", "spamtl.serve", "spamtl.web", "spamtl.cli")),
    (("spamtl.services",), ("typer", "spamtl.serve", "spamtl.web", "spamtl.cli")),
    (("spamtl.serve",), ("typer", "spamtl.cli", "spamtl.web")),
    # the web pages are a protocol like the daemon: they ask the services, never the store or the maths
    (("spamtl.web",), ("typer", "sqlalchemy", "spamtl.cli", "spamtl.serve", "spamtl.store", "spamtl.model")),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[r[0][0] for r in RULES])
def test_imports_point_down(layer: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    wrong = sorted((name, m) for name, found in _imports().items() if name.startswith(layer)
                   for m in found if m.startswith(forbidden))
    assert wrong == []
