"""Built-in informativeness proxies (EVA Table 3)."""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin import hookimpl
from eva_plugin.creator.proxies import BUILTIN_PROXIES


@hookimpl
def register_proxies(register: Callable) -> None:
    for name, proxy in BUILTIN_PROXIES.items():
        register(name, proxy)
