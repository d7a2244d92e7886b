"""The project's import graph, read from the source (AST), not by importing anything.

Issue 20: no import cycle among the modules of pipeline/, stages/ and store_schema/ (every import counts,
module level or deferred inside a function; only `if TYPE_CHECKING:` blocks, which never run, are left out);
nothing under stages/ or store_schema/ imports pipeline/; every pipeline/ file stays a few hundred lines; the loader of the exported student reaches neither
zarr nor the training loader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "store_schema")
PIPELINE_MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every module name this module imports (absolute; `from a import b` counts a.b when it is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: project modules it imports}, {module: top-level names of everything it imports})."""
    modules = _modules()
    graph, external = {}, {}
    for name, path in modules.items():
        targets = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
        external[name] = {t.split(".")[0] for t in targets if t}
    return graph, external


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_project_modules():
    graph, _ = import_graph()
    assert len(graph) > 100  # the whole project was read
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_stages_and_store_schema_never_import_pipeline():
    graph, _ = import_graph()
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() if not m.startswith("pipeline")
                    for t in ts if t == "pipeline" or t.startswith("pipeline."))
    assert not upward, upward


@pytest.mark.parametrize("path", sorted((REPO / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_every_pipeline_file_is_small(path):
    """pipeline/ is argument parsing and printing: a file of it reads at a glance."""
    assert len(path.read_text().splitlines()) <= PIPELINE_MAX_LINES


def test_the_exported_student_loader_needs_neither_zarr_nor_the_training_loader():
    graph, external = import_graph()
    closure = reachable(graph, "stages.distill.exported")
    assert "stages.distill.loader" not in closure and "stages.distill.train" not in closure, sorted(closure)
    third_party = set().union(*(external[m] for m in closure))
    assert "zarr" not in third_party, sorted(m for m in closure if "zarr" in external[m])
