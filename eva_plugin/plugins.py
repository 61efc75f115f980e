"""The plugin manager: built-ins (``default_plugins/``) and third-party plugins (entry-point group ``eva_plugin``).

``EVA_LOAD_PLUGINS`` picks the third-party plugins: unset loads every entry point of the
group, a comma-separated list of distribution or entry-point names loads only those, and
an empty value loads none. A plugin that fails to import, or whose ``register_*`` hook
raises, is skipped with one warning (and listed by ``eva plugins``); the rest still work.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from types import TracebackType
from typing import Any

import pluggy

from eva_plugin import hookspecs
from eva_plugin.default_plugins import MODULES, Lazy, resolve
from eva_plugin.errors import EvaError, RecipeError, UnknownPluginError
from eva_plugin.options import NoOptions, Options
from eva_plugin.typed import from_mapping, short_repr

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "eva_plugin"
LOAD_ENV = "EVA_LOAD_PLUGINS"
BUILTIN = "built-in"

#: Plugin kinds, each the name of its hook without the ``register_`` prefix.
KINDS = ("proxies", "selectors", "evolvers", "reward_models", "backends")
SINGULAR = {"proxies": "proxy", "selectors": "selector", "evolvers": "evolver", "reward_models": "reward model",
            "backends": "backend"}
#: Kinds whose factories declare options (``Options``) and are built with ``from_options(…, options, context)``.
BUILT_KINDS = ("evolvers", "reward_models", "backends")


@dataclass(frozen=True)
class Registered:
    name: str
    obj: Any
    source: str


@dataclass(frozen=True)
class Skipped:
    """A third-party plugin left out: at load (``kind`` None) or from one kind's registry."""

    source: str
    error: str
    kind: str | None = None

    def line(self) -> str:
        where = f" for {self.kind}" if self.kind else ""
        return f"skipped plugin {self.source}{where}: {self.error}"


@dataclass
class _Loaded:
    pm: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> "<dist> <version>"
    skipped: dict[tuple[str | None, str], Skipped] = field(default_factory=dict)

    def skip(self, entry: Skipped) -> None:
        key = (entry.kind, entry.source)
        if key not in self.skipped:
            self.skipped[key] = entry
            logger.warning("eva: %s", entry.line())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted() -> set[str] | None:
    """The plugin names ``EVA_LOAD_PLUGINS`` asks for (normalised), or None for all."""
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {_norm(n.strip()) for n in value.split(",") if n.strip()}


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _load_entry_points(loaded: _Loaded) -> None:
    wanted = _wanted()
    found: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ep.value
        names = {_norm(dist), _norm(ep.name)}
        if wanted is not None and not names & wanted:
            continue
        found |= names
        source = f"{dist} {ep.dist.version}" if ep.dist else ep.value
        if loaded.pm.is_blocked(ep.name) or loaded.pm.get_plugin(ep.name) is not None:
            continue
        try:
            loaded.pm.register(ep.load(), name=ep.name)
        except Exception as err:  # a broken plugin must not break every command
            loaded.skip(Skipped(source, _error(err)))
            continue
        loaded.sources[ep.name] = source
    for name in sorted((wanted or set()) - found):
        loaded.skip(Skipped(name, f"{LOAD_ENV} names it but no installed {ENTRY_POINT_GROUP} plugin has that name"))


@cache
def _loaded() -> _Loaded:
    pm = pluggy.PluginManager("eva_plugin")
    pm.add_hookspecs(hookspecs)
    loaded = _Loaded(pm)
    for module in MODULES:
        pm.register(importlib.import_module(module), name=module)
    _load_entry_points(loaded)
    return loaded


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy manager with the built-ins and the third-party plugins ``EVA_LOAD_PLUGINS`` allows."""
    return _loaded().pm


def source_of(plugin: object) -> str:
    """``built-in``, ``<dist> <version>`` for an entry-point plugin, else its registered name."""
    loaded = _loaded()
    name = loaded.pm.get_name(plugin) or repr(plugin)
    if name in loaded.sources:
        return loaded.sources[name]
    return BUILTIN if name in MODULES else name


def _owners(caller: pluggy.HookCaller) -> dict[Any, list[pluggy.HookImpl]]:
    """The code object of every implementation of one hook, mapped to its implementations."""
    owners: dict[Any, list[pluggy.HookImpl]] = {}
    for impl in caller.get_hookimpls():
        code = getattr(getattr(impl.function, "__func__", impl.function), "__code__", None)
        if code is not None:
            owners.setdefault(code, []).append(impl)
    return owners


def _frames(start: Any) -> Iterator[Any]:
    while start is not None:
        yield start
        start = start.f_back


def _impl_of(frame: Any, owners: dict[Any, list[pluggy.HookImpl]]) -> pluggy.HookImpl | None:
    """The hook implementation running in ``frame`` (a bound method is told apart by its ``self``)."""
    impls = owners.get(frame.f_code)
    if not impls:
        return None
    this = frame.f_locals.get("self")
    return next((i for i in impls if getattr(i.function, "__self__", None) is this), impls[0])


def _caller_impl(owners: dict[Any, list[pluggy.HookImpl]]) -> pluggy.HookImpl | None:
    """The nearest hook implementation up the stack from ``register``'s caller."""
    return next((impl for f in _frames(sys._getframe(2)) if (impl := _impl_of(f, owners))), None)


def _raising_impl(tb: TracebackType | None, owners: dict[Any, list[pluggy.HookImpl]]) -> pluggy.HookImpl | None:
    """The innermost hook implementation in a traceback: the one that raised."""
    culprit = None
    while tb is not None:
        culprit = _impl_of(tb.tb_frame, owners) or culprit
        tb = tb.tb_next
    return culprit


class _DuplicateName(EvaError, ValueError):
    """Two plugins registered one name."""


def _collect(kind: str, caller: pluggy.HookCaller) -> dict[str, Registered]:
    """Call one ``register_*`` hook through pluggy and gather what it registers, by source."""
    owners = _owners(caller)
    found: dict[str, Registered] = {}

    def register(name: str, obj: Any) -> None:
        impl = _caller_impl(owners)
        source = source_of(impl.plugin) if impl else "unknown plugin"
        if name in found:
            raise _DuplicateName(
                f"{SINGULAR[kind]} {name!r} is registered twice ({found[name].source} and {source}); "
                "uninstall one of the plugins or leave one out of " + LOAD_ENV
            )
        found[name] = Registered(name, obj, source)

    caller(register=register)
    return found


@cache
def registry(kind: str) -> dict[str, Registered]:
    """Every registered name of one kind; a later plugin may not silently shadow an earlier one."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(KINDS)}")
    loaded = _loaded()
    hook_name = f"register_{kind}"
    dropped: list[object] = []
    while True:
        caller = loaded.pm.subset_hook_caller(hook_name, dropped) if dropped else getattr(loaded.pm.hook, hook_name)
        try:
            return _collect(kind, caller)
        except _DuplicateName:
            raise
        except Exception as err:
            impl = _raising_impl(err.__traceback__, _owners(caller))
            if impl is None or source_of(impl.plugin) == BUILTIN:
                raise  # our own bug, or nothing to drop
            loaded.skip(Skipped(source_of(impl.plugin), _error(err), kind))
            dropped.append(impl.plugin)


def skipped() -> list[Skipped]:
    """The third-party plugins left out so far (call ``registry`` for every kind first to see all)."""
    return list(_loaded().skipped.values())


def _registered(kind: str, name: str) -> Registered:
    table = registry(kind)
    if name not in table:
        known = ", ".join(sorted(table))
        raise UnknownPluginError(f"unknown {SINGULAR[kind]} {short_repr(name)}; known: {known}")
    return table[name]


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` (a lazy factory imported now); an unknown name lists the known ones."""
    return resolve(_registered(kind, name).obj)


def names(kind: str) -> list[str]:
    return sorted(registry(kind))


def options_schema(kind: str, name: str) -> type[Options]:
    """The ``Options`` dataclass the factory registered as ``name`` declares (``NoOptions`` when none);
    a ``Lazy`` factory that names its schema is not imported."""
    obj = _registered(kind, name).obj
    schema = getattr(obj, "Options", None)
    if schema is None and isinstance(obj, Lazy):
        schema = getattr(resolve(obj), "Options", None)
    if schema is None:
        return NoOptions
    if not (isinstance(schema, type) and issubclass(schema, Options)):
        raise RecipeError(f"{SINGULAR[kind]} {name}: its Options must subclass eva_plugin.options.Options")
    return schema


def parse_options(kind: str, name: str, values: Mapping[str, Any] | None, where: str) -> Options:
    """The recipe's ``values`` (the mapping at recipe key ``where``) as ``name``'s ``Options``: an unknown key,
    a wrong type or a value out of range is one ``RecipeError`` line naming the key and the allowed ones."""
    return from_mapping(options_schema(kind, name), values or {}, where, owner=name)


def build(kind: str, name: str, *args: Any, options: Options, context: Any) -> Any:
    """``factory.from_options(*args, options, context)`` for the factory registered as ``name``."""
    factory = get(kind, name)
    make = getattr(factory, "from_options", None)
    if make is None:
        raise RecipeError(f"{SINGULAR[kind]} {name} ({_registered(kind, name).source}) has no from_options; "
                          f"see eva_plugin.hookspecs for what a {SINGULAR[kind]} factory provides")
    return make(*args, options, context)


def reset() -> None:
    """Forget the loaded plugins (tests install plugins at run time)."""
    _loaded.cache_clear()
    registry.cache_clear()
