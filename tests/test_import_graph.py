"""The import graph of the package (runtime/, imported as g4rt) has no circles, and the test
stand-ins (g4rt.testing) stay out of the production modules.

Every module is read with `ast`, not imported: an import inside a function counts as much as one
at the top (it runs too, only later), relative and absolute `g4rt` imports alike. Imports under
`if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
PACKAGE = "g4rt"

# The one production module allowed to reach the test stand-ins: the registry injects the
# emulated CUDA driver when G4RT_CUDA_EMULATE asks for it.
TESTING_IMPORT_ALLOWED = {f"{PACKAGE}.backends.registry"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(RUNTIME.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imported_modules(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(g4rt module, line) for each import in the file: `from . import x` names submodule x when
    there is one, else the package itself."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
            continue
        if node.level:
            base_parts = package.split(".")
            base_parts = base_parts[:len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == PACKAGE:
            base = node.module
        else:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append((sub if sub in known else base, node.lineno))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported g4rt module: first line}} over every module of the package."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imported_modules(name, path, known):
            if target != name and target in known:
                edges.setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle (a, b, ..., a) through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_circle_in(graph, set(g)) for g in groups]


def _circle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest circle from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle in strongly connected group {sorted(group)}")


def describe(graph: dict[str, dict[str, int]], circle: list[str]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(circle, circle[1:])]
    return " -> ".join(steps + [circle[-1]])


# ---- the tests ------------------------------------------------------------------------------
def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50, f"only {len(graph)} modules found under {RUNTIME}"
    circles = find_cycles(graph)
    assert not circles, "import circles (function-level imports count):\n" + "\n".join(
        describe(graph, c) for c in circles)


def test_only_the_registry_imports_the_test_stand_ins():
    modules = all_modules()
    known = set(modules)
    offenders = []
    for name, path in modules.items():
        if name == f"{PACKAGE}.testing" or name.startswith(f"{PACKAGE}.testing.") or name in TESTING_IMPORT_ALLOWED:
            continue
        for target, line in imported_modules(name, path, known):
            if target == f"{PACKAGE}.testing" or target.startswith(f"{PACKAGE}.testing."):
                offenders.append(f"{path.relative_to(RUNTIME.parent)}:{line} imports {target}")
    assert not offenders, "production modules importing g4rt.testing:\n" + "\n".join(offenders)


def test_the_checker_names_a_lazy_circle(tmp_path):
    """The checker itself can fail: a circle closed by a function-level import is named."""
    graph = {"g4rt.a": {"g4rt.b": 3}, "g4rt.b": {"g4rt.c": 7}, "g4rt.c": {"g4rt.a": 12}, "g4rt.d": {"g4rt.a": 1}}
    assert find_cycles(graph) == [["g4rt.a", "g4rt.b", "g4rt.c", "g4rt.a"]]
    assert describe(graph, find_cycles(graph)[0]) == \
        "g4rt.a (line 3) -> g4rt.b (line 7) -> g4rt.c (line 12) -> g4rt.a"
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from g4rt import x\n"
                   "def f():\n    from .. import ops\n    import g4rt.engine\n")
    found = imported_modules("g4rt.pkg.m", src, {"g4rt.ops", "g4rt.engine", "g4rt.x"})
    assert sorted(found) == [("g4rt.engine", 6), ("g4rt.ops", 5)]
