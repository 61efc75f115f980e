"""Recipe checks that need the plugin registry or the file system: plugin names and options, weightings,
loss knobs, model paths. ``EvaArguments.__post_init__`` runs the plugin checks; the model paths are
checked once the recipe is read, before any model loads. Each failure is one line listing the choices.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from eva_plugin import plugins
from eva_plugin.errors import RecipeError

if TYPE_CHECKING:
    from eva_plugin.config import EvaArguments



def generations(eva: EvaArguments) -> list:
    """The sampling blocks of ``eva`` (its dataclass-valued fields) with their keys."""
    return [(f.name, getattr(eva, f.name)) for f in dataclasses.fields(eva)
            if dataclasses.is_dataclass(getattr(eva, f.name))]

#: (plugin kind, ``eva.`` key) for every name a recipe gives a plugin.
PLUGIN_KEYS = (
    ("proxies", "proxy"),
    ("selectors", "selector"),
    ("evolvers", "evolver"),
    ("reward_models", "reward_type"),
    ("backends", "generation.backend"),
    ("backends", "evolver_generation.backend"),
    ("backends", "judge_generation.backend"),
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

    for key, value in eva.loss_args.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"`eva.loss_args.{key}` must be a number, got {value!r}")
    if eva.loss is not None:  # null: settled against the recipe's `loss_type` (recipe.read_eva_side)
        loss_knobs(eva.loss, eva.loss_args)
    if eva.weighting not in WEIGHTINGS:
        raise RecipeError(f"unknown eva.weighting {eva.weighting!r}; known: {', '.join(WEIGHTINGS)}")
    for kind, key in PLUGIN_KEYS:
        name = _value(eva, key)
        if name not in plugins.registry(kind):
            known = ", ".join(plugins.names(kind))
            raise RecipeError(f"unknown eva.{key} {name!r}; known: {known} (`eva plugins` lists them)")
    check_inline_secrets(eva)
    for kind, name, values, where in plugin_options(eva):
        plugins.parse_options(kind, name, values, where)


def plugin_options(eva: EvaArguments) -> list[tuple[str, str, dict, str]]:
    """Every options mapping of the recipe: (plugin kind, plugin name, the mapping, its recipe key)."""
    return [("evolvers", eva.evolver, eva.evolver_options, "eva.evolver_options"),
            ("reward_models", eva.reward_type, eva.reward_options, "eva.reward_options"),
            *(("backends", gen.backend, gen.options, f"eva.{key}.options") for key, gen in generations(eva))]


def check_inline_secrets(eva: EvaArguments) -> None:
    """No secret (``api_key``, ``token``, ``password``, …) written inline in an options mapping:
    it would land in manifests; the key belongs in an environment variable (``api_key_env``)."""
    from eva_plugin.secrets import secret_keys

    for where, options in (*((f"{key}.options", gen.options) for key, gen in generations(eva)),
                           ("evolver_options", eva.evolver_options), ("reward_options", eva.reward_options)):
        found = secret_keys(options or {})
        if found:
            raise RecipeError(f"eva.{where}.{found[0]}: secrets are not read from a recipe (they would be "
                              "written to manifests); put it in an environment variable and name that "
                              "variable with api_key_env (e.g. api_key_env: OPENAI_API_KEY)")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    import os

    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


#: Reward types whose ``eva.reward_model`` is a model folder (a plugin's may name something else).
BUILTIN_REWARD_TYPES = ("sequence_classification", "embedding", "pairwise")


def check_model_paths(recipe_model: str | None, eva: EvaArguments, creator: str | None, *,
                      hub: bool = True, trust_remote_code: bool = False) -> None:
    """Every model the run will load (policy, reward model, evolver), before the first one loads.
    ``eva_plugin.dpo.main`` calls it once the recipe is read (``load_recipe`` alone only parses, so
    shipped recipes parse on any machine); offline (HF_HUB_OFFLINE), a hub id must be in the local
    cache. A plain DPO round (no ``creator:``) leaves a policy hub id to TRL. A local folder's files
    are checked too (``check_model_files``); ``trust_remote_code``: the recipe's, for the policy and
    the evolver / judge LLMs (a reward model's is in ``eva.reward_options``)."""
    check_model_path(recipe_model, "model_name_or_path", hub=hub and creator is not None)
    check_model_files(recipe_model, "model_name_or_path", trust_remote_code=trust_remote_code,
                      chat=creator is not None)
    if creator is not None and eva.reward_type in BUILTIN_REWARD_TYPES:
        check_model_path(eva.reward_model, "eva.reward_model", hub=hub)
        check_model_files(eva.reward_model, "eva.reward_model",
                          trust_remote_code=bool((eva.reward_options or {}).get("trust_remote_code")))
        if eva.reward_type == "sequence_classification":
            check_reward_head(eva.reward_model)
    for role in ("evolver", "judge"):
        model, gen = getattr(eva, f"{role}_model"), getattr(eva, f"{role}_generation")
        if model is None:
            continue
        if gen.backend == "openai":  # the model name the server knows
            if not str(model).strip():
                raise RecipeError(f"`eva.{role}_model` is empty; name the server's model or leave it null")
        else:
            check_model_path(model, f"eva.{role}_model", hub=hub)
            check_model_files(model, f"eva.{role}_model", trust_remote_code=trust_remote_code, chat=True)


def check_model_files(path: str | None, where: str, *, trust_remote_code: bool, chat: bool = False) -> None:
    """A local model folder's files as ``model_files`` reads them: weights present with sound
    safetensors headers, a readable tokenizer, a chat template where the model answers chat
    (``chat``), and no custom code (``auto_map``) unless ``trust_remote_code``. Hub ids: nothing to read."""
    from pathlib import Path

    from eva_plugin import model_files

    folder = Path(path).expanduser() if isinstance(path, str) and path.strip() else None
    if folder is None or not (folder / "config.json").is_file():
        return
    if fault := model_files.weights_fault(folder) or model_files.tokenizer_fault(folder):
        raise RecipeError(f"`{where}`: {fault}; point it at a complete saved model folder (save_pretrained "
                          "writes weights, config and tokenizer)")
    own = model_files.custom_code(folder)
    if own and not trust_remote_code:
        switch = "eva.reward_options.trust_remote_code" if where == "eva.reward_model" else "trust_remote_code"
        raise RecipeError(f"`{where}`: {path} runs its own code ({own} has auto_map); read that code, then set "
                          f"`{switch}: true` to allow it, or use a model transformers supports natively")
    if chat and not model_files.has_chat_template(folder):
        raise RecipeError(f"`{where}`: the tokenizer of {path} has no chat template (no chat_template.jinja, no "
                          "chat_template in tokenizer_config.json); use an instruct model or add its template")


def check_reward_head(path: str | None) -> None:
    """A ``sequence_classification`` reward model must have a score head: a folder whose config.json
    names only causal-LM architectures would get a randomly initialised one (random rewards)."""
    from pathlib import Path

    from eva_plugin.model_files import causal_lm_only

    if not isinstance(path, str) or not Path(path).expanduser().is_dir():
        return
    arch = causal_lm_only(Path(path).expanduser())
    if arch:
        raise RecipeError(f"`eva.reward_model`: {path} is a causal LM ({arch} in config.json), not a reward model; "
                          "its score head would be random. Use a *ForSequenceClassification reward model, or "
                          "`eva.reward_type: pairwise` for a preference LM")


def check_model_path(path: str | None, where: str, *, hub: bool = True) -> None:
    """A model a run will load: a local folder with ``config.json`` (``embedded:`` names are resolved
    to one before this check), or a hub id: online it is fetched when it loads; with HF_HUB_OFFLINE /
    TRANSFORMERS_OFFLINE set it must already be in the local Hugging Face cache."""
    from pathlib import Path

    if path is None:
        return
    if not isinstance(path, str) or not path.strip():
        raise RecipeError(f"`{where}` is empty; set it to a model folder (with config.json)")
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise RecipeError(f"`{where}`: {path} holds no config.json; point it at a saved model folder")
        return
    if local.exists():
        raise RecipeError(f"`{where}`: {path} is a file; point it at a model folder (with config.json)")
    looks_local = path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or os_sep_in(path)
    if looks_local:
        raise RecipeError(f"`{where}`: {path} does not exist; point it at a model folder (with config.json)")
    if hub and hub_offline() and not _in_hub_cache(path):
        raise RecipeError(f"`{where}`: {path} is not a local folder and not in the Hugging Face cache, and "
                          "HF_HUB_OFFLINE is set; download it first or point it at a model folder")


def os_sep_in(path: str) -> bool:
    import os

    return os.sep != "/" and os.sep in path


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False
