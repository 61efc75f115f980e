"""The package's shape: no import circles (lazy imports inside functions count too), and no stage
reaches back into the loop that sequences it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "eva_plugin"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eva_plugin"):
                for alias in node.names:  # `from eva_plugin.x import y` may import the module x.y
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("eva_plugin")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_import_graph_has_no_circles():
    graph = import_graph()
    assert {"eva_plugin.loop", "eva_plugin.runtime", "eva_plugin.creator.stages"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_stages_and_the_runtime_never_import_the_loop():
    graph = import_graph()
    for module in ("eva_plugin.creator.stages", "eva_plugin.solver.stages", "eva_plugin.prompt_sets",
                   "eva_plugin.context", "eva_plugin.runtime", "eva_plugin.config", "eva_plugin.data"):
        assert "eva_plugin.loop" not in graph[module], module
    assert "eva_plugin.recipe" not in graph["eva_plugin.data"]
    # the dataclasses check themselves: types and ranges (typed), plugin names and options (checks)
    assert not graph["eva_plugin.config"] - {"eva_plugin.errors", "eva_plugin.typed", "eva_plugin.checks"}
