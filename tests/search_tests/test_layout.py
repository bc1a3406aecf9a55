"""The search package's structure: its modules import each other in one direction (no cycle, counting imports
inside functions too), and it uses only public names of rba."""

from __future__ import annotations

import ast
from pathlib import Path

SEARCH = Path(__file__).resolve().parents[2] / "search"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement of the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_search_modules_import_each_other_without_a_cycle():
    graph = {p.stem: {m.split(".")[1] for m, _ in _imports(p) if m.startswith("search.")}
             for p in SEARCH.glob("*.py") if p.stem != "__init__"}
    order, state = [], {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' → '.join(path + [node])}"
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        state[node] = "done"
        order.append(node)

    for node in sorted(graph):
        visit(node, [])
    for backend in ("optuna_backend", "ray_backend"):
        assert "study" not in graph[backend], f"{backend} imports search.study"


def test_search_uses_only_public_names_of_rba():
    private = []
    for path in sorted(SEARCH.glob("*.py")):
        for module, names in _imports(path):
            if module.split(".")[0] != "rba":
                continue
            if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names):
                private.append(f"{path.name}: from {module} import {', '.join(names)}")
    assert not private, private
