"""Built-in subset selectors."""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin import hookimpl
from eva_plugin.creator.selection import greedy, sample_without_replacement


@hookimpl
def register_selectors(register: Callable) -> None:
    register("sample", sample_without_replacement)
    register("greedy", greedy)
