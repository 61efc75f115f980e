"""Hook specifications: every extension point of eva-plugin is one ``register_*`` hook.

A plugin module implements any of these with ``@eva_plugin.hookimpl`` and calls
``register(name, obj)`` once per thing it provides. Built-ins use the same hooks
(``eva_plugin/default_plugins/``). Hooks are called through pluggy, so ``tryfirst``,
``trylast`` and wrappers work as pluggy documents. A factory may be a
``default_plugins.Lazy("package.module:attribute")`` so its module is imported only on use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from eva_plugin.creator.evolved import EvolvedPrompt

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

    def evolve(self, seeds: Sequence[dict], generate: Callable[[list[str]], list[str | None]],
               rng: np.random.Generator) -> list[EvolvedPrompt]: ...


class EvolverFactory(Protocol):
    """What ``register_evolvers`` registers; the loop calls it as
    ``factory(num_evolutions=eva.num_evolutions, candidates=eva.evolver_candidates, **eva.evolver_options)``.

    ``num_evolutions``: new prompts per seed; ``candidates``: LLM samples per step, of which the
    first usable is kept. Every other keyword is an option of this evolver: declare each one
    (``plugins.check_options`` rejects recipe options the signature does not take) and raise
    ``errors.RecipeError`` for a bad value.
    """

    def __call__(self, *, num_evolutions: int, candidates: int, **options: Any) -> Evolver: ...


@hookspec
def register_proxies(register: Register) -> None:
    """Register informativeness proxies: ``register(name, Proxy(...))``."""


@hookspec
def register_selectors(register: Register) -> None:
    """Register subset selectors: ``register(name, fn(weights, k, rng) -> indices)``."""


@hookspec
def register_evolvers(register: Register) -> None:
    """Register prompt evolvers: ``register(name, factory)``, an ``EvolverFactory`` building an ``Evolver``."""


@hookspec
def register_reward_models(register: Register) -> None:
    """Register reward model types: ``register(name, factory(path, **options) -> RewardModel)``.

    ``options`` are the recipe's ``reward_options`` plus ``device`` (this process's device) when
    the factory takes one."""


@hookspec
def register_backends(register: Register) -> None:
    """Register generation backends: ``register(name, factory(model_path, **options) -> Backend)``.

    ``options``: ``batch_size``, ``dtype``, ``trust_remote_code``, ``device`` (when taken) and the recipe's
    ``generation.options``. ``Backend.generate(conversations, n, params, seeds)`` gets one seed
    per prompt; a prompt's samples should depend on its seed alone (see ``generation.seeding``)."""
