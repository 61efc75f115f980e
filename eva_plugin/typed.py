"""Dataclasses that check their own fields: the recipe's config blocks and every plugin's ``Options``.

A field's annotation gives its type (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``dict[...]``,
``list[...]``/``tuple[...]``; another dataclass is checked on its own) and its metadata may give a
range: ``ge``, ``gt``, ``le``, ``lt`` or ``choices``. ``from_mapping`` refuses unknown keys with the
known ones listed; ``check_fields`` (called from ``__post_init__``) raises ``RecipeError`` with one line
that names the key, e.g. ``eva.generation.top_p must be <= 1, got 2``.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Mapping
from typing import Any, TypeVar

from eva_plugin.errors import RecipeError

T = TypeVar("T")

#: The YAML types each annotation accepts (an int is a valid float; a bool is not an int).
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_NAMES = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string", "None": "null"}


def type_problem(annotation: str, value: Any) -> str | None:
    """Why ``value`` does not fit the annotation text ``annotation``, or None."""
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None:
        return None if "None" in options else "must not be null"
    for option in options:
        base = option.split("[")[0]
        if base in ("dict", "Mapping"):
            if isinstance(value, dict):
                return None
        elif base in ("list", "tuple", "Sequence"):
            if isinstance(value, (list, tuple)):
                return None
        elif base in _TYPES:
            if isinstance(value, _TYPES[base]) and not (base != "bool" and isinstance(value, bool)):
                return None
        elif base not in ("None", "Any"):
            return None  # a nested dataclass: checked on its own
        elif base == "Any":
            return None
    wanted = " or ".join("a mapping" if o.startswith(("dict", "Mapping")) else
                         "a list" if o.startswith(("list", "tuple", "Sequence")) else _NAMES.get(o, o)
                         for o in options)
    return f"must be {wanted}, got {short_repr(value)}"


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a huge value must not flood the error line); built with
    ``reprlib``, so the time it takes does not grow with the value's size."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def range_problem(meta: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` is outside the field's declared range (``ge``/``gt``/``le``/``lt``/``choices``), or None."""
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"must be one of: {', '.join(map(str, meta['choices']))} (got {short_repr(value)})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value) and any(k in meta for k in ("ge", "gt", "le", "lt")):
        return f"must be a finite number, got {value!r}"
    for key, ok, word in (("ge", lambda b: value >= b, ">="), ("gt", lambda b: value > b, ">"),
                          ("le", lambda b: value <= b, "<="), ("lt", lambda b: value < b, "<")):
        if key in meta and not ok(meta[key]):
            return f"must be {word} {meta[key]}, got {value!r}"
    return None


def check_fields(obj: Any, where: str) -> None:
    """Every field of the dataclass ``obj`` against its annotation and declared range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = type_problem(f.type, value) or range_problem(f.metadata, value)
        if problem:
            raise RecipeError(f"`{where}.{f.name}` {problem}")


def unknown_keys(cls: type, values: Mapping[str, Any], where: str, owner: str | None = None) -> None:
    """Refuse keys of ``values`` that ``cls`` has no field for, naming the known ones (``owner``: the plugin
    whose options these are)."""
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = [str(k) for k in values if k not in known]
    if not unknown:
        return
    if owner is None:
        raise RecipeError(f"unknown key(s) {', '.join(unknown)} in `{where}`; known: {', '.join(known)}")
    plural = "s" if len(unknown) > 1 else ""
    raise RecipeError(f"{where}: {owner} takes no option{plural} {', '.join(map(repr, unknown))}; "
                      f"it takes: {', '.join(known) or 'none'}")


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, where: str, owner: str | None = None,
                 **extra: Any) -> T:
    """``cls(**values)``: unknown keys refused, field types checked before the constructor runs."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise RecipeError(f"`{where}` must be a mapping, got {short_repr(values)}")
    unknown_keys(cls, values, where, owner)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        problem = type_problem(fields[name].type, value) or range_problem(fields[name].metadata, value)
        if problem:
            raise RecipeError(f"`{where}.{name}` {problem}")
    return cls(**values, **extra)
