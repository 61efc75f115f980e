"""Hook specifications: every extension point of eva-plugin is one ``register_*`` hook.

A plugin module implements any of these with ``@eva_plugin.hookimpl`` and calls
``register(name, obj)`` once per thing it provides. Built-ins use the same hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("eva_plugin")


@hookspec
def register_proxies(register):
    """Register informativeness proxies: ``register(name, Proxy(...))``."""


@hookspec
def register_selectors(register):
    """Register subset selectors: ``register(name, fn(weights, k, rng) -> indices)``."""


@hookspec
def register_evolvers(register):
    """Register prompt evolvers: ``register(name, factory(**options) -> Evolver)``."""


@hookspec
def register_reward_models(register):
    """Register reward model types: ``register(name, factory(path, **options) -> RewardModel)``.

    ``options`` are the recipe's ``reward_options`` plus ``device`` (this process's device)."""


@hookspec
def register_backends(register):
    """Register generation backends: ``register(name, factory(model_path, **options) -> Backend)``.

    ``options``: ``batch_size``, ``dtype``, ``trust_remote_code``, ``device`` and the recipe's
    ``generation.options``. ``Backend.generate(conversations, n, params, seeds)`` gets one seed
    per prompt; a prompt's samples should depend on its seed alone (see ``generation.seeding``)."""
