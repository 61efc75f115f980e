"""eva-plugin's built-ins, registered through the same ``register_*`` hooks as third-party plugins.

One module per plugin kind; ``plugins.py`` registers each of ``MODULES`` on the plugin
manager. Factories whose modules import torch or transformers are registered as ``Lazy``
objects, so listing plugins (``eva plugins``, recipe validation) imports neither.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = tuple(f"{__name__}.{kind}" for kind in ("proxies", "selectors", "evolvers", "reward_models", "backends"))


class Lazy:
    """A factory named ``"package.module:attribute"``, imported on first use.

    ``options``: the factory's ``Options`` schema, given here so that a recipe's options are checked
    without importing the factory's module (torch, vLLM); the imported factory must declare the same.
    Plugins may register these too.
    """

    def __init__(self, target: str, options: type | None = None) -> None:
        module, sep, attribute = target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"lazy target {target!r} is not 'package.module:attribute'")
        self.target = target
        self.Options = options
        self._resolved: Any = None

    def resolve(self) -> Any:
        """The target object (imported once)."""
        if self._resolved is None:
            module, _, attribute = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attribute.split("."):
                obj = getattr(obj, part)
            self._resolved = obj
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Lazy({self.target!r})"


def resolve(obj: Any) -> Any:
    """``obj`` itself, or the target of a ``Lazy``."""
    return obj.resolve() if isinstance(obj, Lazy) else obj
