"""The plugin manager: built-ins and third-party plugins (entry-point group ``eva_plugin``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import pluggy

from eva_plugin import hookspecs
from eva_plugin.errors import UnknownPluginError

ENTRY_POINT_GROUP = "eva_plugin"

#: Plugin kinds, each the name of its hook without the ``register_`` prefix.
KINDS = ("proxies", "selectors", "evolvers", "reward_models", "backends")
SINGULAR = {"proxies": "proxy", "selectors": "selector", "evolvers": "evolver", "reward_models": "reward model",
            "backends": "backend"}

BUILTIN_MODULES = (
    "eva_plugin.creator.proxies",
    "eva_plugin.creator.selection",
    "eva_plugin.creator.evolvers",
    "eva_plugin.rewards",
    "eva_plugin.generation",
)


@dataclass(frozen=True)
class Registered:
    name: str
    obj: Any
    source: str


@cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("eva_plugin")
    pm.add_hookspecs(hookspecs)
    for module in BUILTIN_MODULES:
        pm.register(importlib.import_module(module), name=module)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _source(pm: pluggy.PluginManager, plugin: object) -> str:
    name = pm.get_name(plugin) or repr(plugin)
    if name.startswith("eva_plugin."):
        return "built-in"
    for plugin_obj, dist in pm.list_plugin_distinfo():
        if plugin_obj is plugin:
            return f"{dist.project_name} {dist.version}"
    return name


@cache
def registry(kind: str) -> dict[str, Registered]:
    """Every registered name of one kind; a later plugin may not silently shadow an earlier one."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(KINDS)}")
    pm = plugin_manager()
    found: dict[str, Registered] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    for impl in hook.get_hookimpls():  # registration order: built-ins first
        source = _source(pm, impl.plugin)

        def register(name: str, obj: Any, _source: str = source) -> None:
            if name in found:
                raise ValueError(
                    f"{SINGULAR[kind]} {name!r} is registered twice ({found[name].source} and {_source}); "
                    "uninstall one of the plugins"
                )
            found[name] = Registered(name, obj, _source)

        impl.function(register=register)
    return found


def get(kind: str, name: str) -> Any:
    """The object registered as ``name``; an unknown name lists the known ones."""
    table = registry(kind)
    if name not in table:
        known = ", ".join(sorted(table))
        raise UnknownPluginError(f"unknown {SINGULAR[kind]} {name!r}; known: {known}")
    return table[name].obj


def names(kind: str) -> list[str]:
    return sorted(registry(kind))


def reset() -> None:
    """Forget the cached plugin manager (tests install plugins at run time)."""
    plugin_manager.cache_clear()
    registry.cache_clear()
