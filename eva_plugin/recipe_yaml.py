"""The YAML reader of recipes and ``--eva.KEY`` values: PyYAML's safe loader, stricter where YAML lets a
mistake through silently or lets a small file grow without bound.

* A key given twice in one mapping (at any depth; a second ``eva:`` block too) is an error naming the key
  and both lines: PyYAML keeps the last one without a word. Merge keys (``<<: *base``) may be overridden.
* Nesting deeper than ``MAX_DEPTH`` is refused while the file is read (no recursion limit, no hang).
* Aliases (``*name``) that would expand to more than ``MAX_NODES`` values (a "billion laughs" bomb), or
  that refer to the node they are in, are refused before any value is built.

Each refusal is a ``RecipeYAMLError`` (a ``yaml.YAMLError``) whose ``problem`` is one line.
"""

from __future__ import annotations

from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Deepest nesting of mappings and lists a recipe may have (recipes use fewer than 10 levels).
MAX_DEPTH = 64
#: Most values (mapping keys, values, list items) a recipe may expand to once aliases are followed.
MAX_NODES = 100_000

_MERGE = "tag:yaml.org,2002:merge"


class RecipeYAMLError(yaml.YAMLError):
    """YAML that parses but cannot be a recipe (a duplicate key, too deep, an alias bomb)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs (module docstring)."""

    def __init__(self, stream: str | bytes | IO) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise RecipeYAMLError(f"nesting deeper than {MAX_DEPTH} levels (line {line}); a recipe needs a "
                                      "few levels: flatten the value")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        check_duplicate_keys(node)
        return node

    def compose_document(self) -> Node:
        node = super().compose_document()
        check_expansion(node)
        return node


def check_duplicate_keys(node: MappingNode) -> None:
    """A scalar key that appears twice in ``node`` (merge keys aside) is an error naming both lines."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE:
            continue
        line, name = key.start_mark.line + 1, (key.tag, key.value)
        if name in seen:
            lines = f"line {line}, twice" if seen[name] == line else f"lines {seen[name]} and {line}"
            raise RecipeYAMLError(f"duplicate key `{_short(key.value)}` ({lines}): YAML would keep only the last "
                                  "one; keep one of them (merge the two blocks)")
        seen[name] = line


def check_expansion(root: Node | None) -> None:
    """Refuse a document whose aliases expand to more than ``MAX_NODES`` values or nest deeper than
    ``MAX_DEPTH`` once followed, or that refers to itself. Each node is measured once (aliases share
    their anchor's node), so a bomb is refused in time proportional to the file, not to its expansion."""
    if root is None:
        return
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (values, depth) once expanded
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            parts = [measured[id(child)] for child in _children(node)]
            size = 1 + sum(p[0] for p in parts)
            depth = 1 + max((p[1] for p in parts), default=0)
            open_nodes.discard(key)
            measured[key] = (size, depth)
            _check_size(node, size, depth)
            continue
        if key in measured:
            continue
        if key in open_nodes:
            raise RecipeYAMLError(f"an alias refers to the value it is in (line {node.start_mark.line + 1}); "
                                  "a recipe cannot be recursive")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)


def _check_size(node: Node, size: int, depth: int) -> None:
    where = f"the value at line {node.start_mark.line + 1}"
    if size > MAX_NODES:
        raise RecipeYAMLError(f"{where} expands to more than {MAX_NODES} values once its aliases (*name) are "
                              "followed; write the values out or use fewer aliases")
    if depth > MAX_DEPTH:
        raise RecipeYAMLError(f"{where} nests deeper than {MAX_DEPTH} levels once its aliases (*name) are "
                              "followed; flatten it")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def load(stream: str | bytes | IO) -> Any:
    """One YAML document as Python values, read with ``RecipeLoader``."""
    loader = RecipeLoader(stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
