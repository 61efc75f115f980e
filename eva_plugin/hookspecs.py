"""Hook specifications: every extension point of eva-plugin is one ``register_*`` hook.

A plugin module implements any of these with ``@eva_plugin.hookimpl`` and calls
``register(name, obj)`` once per thing it provides. Built-ins use the same hooks
(``eva_plugin/default_plugins/``). Hooks are called through pluggy, so ``tryfirst``,
``trylast`` and wrappers work as pluggy documents. A factory may be a
``default_plugins.Lazy("package.module:attribute", options=TheOptions)`` so its module is imported
only when it is built (its options are still checked when the recipe is read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from eva_plugin.creator.evolved import Completion, EvolvedPrompt
    from eva_plugin.options import Options

hookspec = pluggy.HookspecMarker("eva_plugin")

#: ``register(name, obj)``: what every hook receives.
Register = Callable[[str, Any], None]


class Evolver(Protocol):
    """Turns informative seed prompts into new prompts (EVA §2 step 3).

    ``seeds``: one dict per seed with ``prompt_id``, ``prompt`` and, with
    ``eva.evolver_feedback``, ``feedback`` (``best``/``worst`` responses and their rewards).
    ``generate(instructions)``: the evolver LLM, one batched call; one completion per
    instruction, ``None`` for a failed call, else a ``creator.evolved.Completion`` (``text``, and
    ``truncated`` for one cut at the token limit). ``rng``: a seeded ``numpy.random.Generator``, the only randomness
    an evolver may use (so a resumed run evolves the same prompts).
    Returns every attempt as an ``EvolvedPrompt`` (``parent_id`` = the seed's ``prompt_id``,
    ``status`` "kept" for usable ones; the loop drops the rest and screens the kept ones).
    """

    def evolve(self, seeds: Sequence[dict], generate: Callable[[list[str]], list[Completion | None]],
               rng: np.random.Generator) -> list[EvolvedPrompt]: ...


class Factory(Protocol):
    """What ``register_evolvers``, ``register_reward_models`` and ``register_backends`` register: a class
    (or any object) with

    - ``Options``: an ``eva_plugin.options.Options`` dataclass declaring the recipe options it takes
      (absent: none). The recipe's ``*_options`` mapping is checked against it when the recipe is read;
      an unknown key, a wrong type or a value out of range is one line naming the key.
    - ``from_options(…, options, context)``: builds the object from the parsed ``options`` and what the
      run owns (``context``); see each hook for the arguments.
    """

    Options: type[Options]

    def from_options(self, *args: Any) -> Any: ...


@hookspec
def register_proxies(register: Register) -> None:
    """Register informativeness proxies: ``register(name, Proxy(...))``."""


@hookspec
def register_selectors(register: Register) -> None:
    """Register subset selectors: ``register(name, fn(weights, k, rng) -> indices)``."""


@hookspec
def register_evolvers(register: Register) -> None:
    """Register prompt evolvers: ``register(name, factory)``, a ``Factory`` whose
    ``from_options(options, context: EvolverContext) -> Evolver`` (``eva.evolver_options``)."""


@hookspec
def register_reward_models(register: Register) -> None:
    """Register reward model types: ``register(name, factory)``, a ``Factory`` whose
    ``from_options(path, options, context: ModelContext) -> RewardModel`` (``eva.reward_options``)."""


@hookspec
def register_backends(register: Register) -> None:
    """Register generation backends: ``register(name, factory)``, a ``Factory`` whose
    ``from_options(model_path, options, context: ModelContext) -> Backend`` (``eva.<block>.options``).

    ``generation.Backend`` states what the loop uses: ``generate(conversations, n, params, seeds)`` (one
    seed per prompt; a prompt's samples should depend on its seed alone, see ``generation.seeding``),
    ``close()``, ``exclusive`` and ``ranks_per_engine`` (``generation.BackendBase`` has their defaults)."""
