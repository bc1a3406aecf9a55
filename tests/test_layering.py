"""The import layers of rba and search, bottom to top, held by reading the source (ast, no imports run).

Every import counts, function-level ones included (they run too, only later), and so does the package
``__init__`` that importing a submodule runs from outside its package (``rba.adapters`` for
``rba.adapters._base``); the root packages ``rba`` and ``search`` are left out of that, as every import of a
submodule runs them. An import may reach its
own layer or a lower one, never a higher one, and, leaving out the imports under ``if TYPE_CHECKING:`` (they never
run), the modules form no cycle. So no function-level import is there to dodge a cycle: moved to the top of its
module, it would still close none (the lazy ones left wait for a heavy optional library, and say so).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: bottom to top; a module belongs to the first layer with a matching pattern
LAYERS: list[tuple[str, list[str]]] = [
    ("errors, spans, config schema, shared names and registries", [
        "rba.errors", "rba.spans", "rba.config", "rba.names", "rba._registry", "rba.methods", "rba.samplers",
        "rba._io", "rba._folders", "rba._records", "rba.files", "rba._threads", "rba.stats", "rba.timing", "rba.progress",
        "rba.compat"]),
    ("statistics, metrics, fits (no adapters, no models)", [
        "rba.statistics", "rba.metrics", "rba.metrics.*", "rba.fit", "rba._translators", "rba._modules",
        "rba._next_token"]),
    ("adapters, data", ["rba.adapters", "rba.adapters.*", "rba.data", "rba.datasets", "rba.models"]),
    ("capture, apply, evaluate, cost, export", [
        "rba.capture", "rba.vectors", "rba.apply", "rba.evaluate", "rba.cost", "rba.sequential", "rba.export",
        "rba.onnx", "rba.compare"]),
    ("session", ["rba.session"]),
    ("search", ["search", "search.*"]),
    ("the CLI and the public API (rba.search())", ["rba.cli", "rba"]),
]


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for path in sorted([*root.glob("rba/**/*.py"), *root.glob("search/**/*.py")]):
        parts = path.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def import_edges(root: Path) -> list[tuple[str, str, int, bool]]:
    """(importer, imported module, line, runs) for every import between project modules; runs is False for the
    imports under ``if TYPE_CHECKING:``."""
    mods = _modules(root)
    edges = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                # `from rba import fit` imports the module rba.fit; `from rba.adapters import Adapter`, the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            found = set()
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
                parent = target.rpartition(".")[0]
                # the packages it runs on the way, from outside them (not the roots, which every import runs)
                while parent not in ("", "rba", "search"):
                    if name != parent and not name.startswith(parent + "."):
                        found.add(parent)
                    parent = parent.rpartition(".")[0]
            edges += [(name, t, node.lineno, id(node) not in typing_only) for t in sorted(found)]
    return edges


def layer_of(module: str) -> int | None:
    for number, (_, patterns) in enumerate(LAYERS, start=1):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return number
    return None


def problems(root: Path) -> list[str]:
    mods = _modules(root)
    found = [f"{m} is in no layer: add it to LAYERS in tests/test_layering.py" for m in mods if layer_of(m) is None]
    edges = import_edges(root)
    for src, dst, line, _ in edges:
        a, b = layer_of(src), layer_of(dst)
        if a is not None and b is not None and b > a:
            found.append(f"{src} (layer {a}) imports {dst} (layer {b}) at line {line}")
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _, runs in edges:
        if runs:
            graph[src].add(dst)
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_follow_the_layers_without_cycles():
    assert problems(ROOT) == []


def test_search_is_reached_only_from_the_cli_and_the_public_api():
    reach = sorted({src for src, dst, _, _ in import_edges(ROOT)
                    if dst.split(".")[0] == "search" and src.split(".")[0] == "rba"})
    assert reach == ["rba", "rba.cli"]


def test_the_check_sees_an_upward_import_and_a_cycle(tmp_path):
    """The same check on a tree where a fit reads the session lazily (upward) and two modules import each other."""
    (tmp_path / "rba").mkdir()
    (tmp_path / "search").mkdir()
    for name, body in {
        "__init__": "", "session": "from rba import fit\n",
        "fit": "def f():\n    from rba.session import x\n",
        "capture": "from rba.apply import y\n", "apply": "from rba.capture import z\n",
    }.items():
        (tmp_path / "rba" / f"{name}.py").write_text(body)
    (tmp_path / "search" / "__init__.py").write_text("")
    found = problems(tmp_path)
    assert "rba.fit (layer 2) imports rba.session (layer 5) at line 2" in found
    assert "import cycle: rba.apply -> rba.capture" in found
    assert "import cycle: rba.fit -> rba.session" in found


def unexplained_function_imports(root: Path) -> list[str]:
    """``path:line`` of every import inside a function of rba/ or search/ with no comment on its line or the line
    above: one left in a function waits for something (a heavy optional library, the CLI's fast start, the hub
    switched off) and says what."""
    out = []
    for path in _modules(root).values():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in line and not above.lstrip().startswith("#"):
                        out.append(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(set(out))


def test_every_function_level_import_says_why(tmp_path):
    assert unexplained_function_imports(ROOT) == []
    (tmp_path / "rba").mkdir()
    (tmp_path / "rba" / "__init__.py").write_text("")
    (tmp_path / "rba" / "fit.py").write_text("def f():\n    import json  # lazy: a reason\n\n\ndef g():\n"
                                            "    import numpy\n")
    assert unexplained_function_imports(tmp_path) == [str(Path("rba") / "fit.py") + ":6"]
