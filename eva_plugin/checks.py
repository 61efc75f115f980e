"""Recipe checks that need more than ``config.py``'s value ranges: plugin names, weightings, loss knobs.

They run in ``eva_plugin.recipe.load_recipe`` before TRL, transformers or any model is
imported, and fail with one line that lists the valid choices.
"""

from __future__ import annotations

from eva_plugin import plugins
from eva_plugin.config import EvaArguments
from eva_plugin.errors import RecipeError

#: (plugin kind, ``eva.`` key) for every name a recipe gives a plugin.
PLUGIN_KEYS = (
    ("proxies", "proxy"),
    ("selectors", "selector"),
    ("evolvers", "evolver"),
    ("reward_models", "reward_type"),
    ("backends", "generation.backend"),
    ("backends", "evolver_generation.backend"),
)


def _value(eva: EvaArguments, dotted: str):
    value = eva
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_plugins(eva: EvaArguments) -> None:
    """Plugin names, the proxy weighting, the loss and its knobs, and the evolver's options."""
    from eva_plugin.creator.proxies import WEIGHTINGS
    from eva_plugin.solver.losses import loss_knobs

    if eva.loss is not None:  # null: settled against the recipe's `loss_type` (recipe.read_eva_side)
        loss_knobs(eva.loss, eva.loss_args)
    if eva.weighting not in WEIGHTINGS:
        raise RecipeError(f"unknown eva.weighting {eva.weighting!r}; known: {', '.join(WEIGHTINGS)}")
    for kind, key in PLUGIN_KEYS:
        name = _value(eva, key)
        if name not in plugins.registry(kind):
            known = ", ".join(plugins.names(kind))
            raise RecipeError(f"unknown eva.{key} {name!r}; known: {known} (`eva plugins` lists them)")
    plugins.check_options("evolvers", eva.evolver, eva.evolver_options, "eva.evolver_options")
    check_inline_secrets(eva)


def check_inline_secrets(eva: EvaArguments) -> None:
    """No secret (``api_key``, ``token``, ``password``, …) written inline in an options mapping:
    it would land in manifests; the key belongs in an environment variable (``api_key_env``)."""
    from eva_plugin.secrets import secret_keys

    for where, options in (("generation.options", eva.generation.options),
                           ("evolver_generation.options", eva.evolver_generation.options),
                           ("evolver_options", eva.evolver_options), ("reward_options", eva.reward_options)):
        found = secret_keys(options or {})
        if found:
            raise RecipeError(f"eva.{where}.{found[0]}: secrets are not read from a recipe (they would be "
                              "written to manifests); put it in an environment variable and name that "
                              "variable with api_key_env (e.g. api_key_env: OPENAI_API_KEY)")
