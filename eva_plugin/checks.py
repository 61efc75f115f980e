"""Recipe checks that need the plugin registry or the file system: plugin names and options, weightings,
loss knobs, model paths. ``EvaArguments.__post_init__`` runs the plugin checks; the model paths are
checked once the recipe is read, before any model loads. Each failure is one line listing the choices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from eva_plugin import plugins
from eva_plugin.errors import RecipeError
from eva_plugin.typed import short_repr

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
    ("reward_models", "creator_reward_type"),
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
            raise RecipeError(f"`eva.loss_args.{key}` must be a number, got {short_repr(value)}")
        if not math.isfinite(value):
            raise RecipeError(f"`eva.loss_args.{key}` must be a finite number, got {short_repr(value)}")
    if eva.loss is not None:  # null: settled against the recipe's `loss_type` (recipe.read_eva_side)
        loss_knobs(eva.loss, eva.loss_args)
    if eva.weighting not in WEIGHTINGS:
        raise RecipeError(f"unknown eva.weighting {short_repr(eva.weighting)}; known: {', '.join(WEIGHTINGS)}")
    for kind, key in PLUGIN_KEYS:
        name = _value(eva, key)
        if name is None:  # a key that may be left null takes another's plugin (creator_reward_type: reward_type's)
            continue
        if name not in plugins.registry(kind):
            known = ", ".join(plugins.names(kind))
            raise RecipeError(f"unknown eva.{key} {short_repr(name)}; known: {known} (`eva plugins` lists them)")
    check_inline_secrets(eva)
    for kind, name, values, where in plugin_options(eva):
        plugins.parse_options(kind, name, values, where)


def plugin_options(eva: EvaArguments) -> list[tuple[str, str, dict, str]]:
    """Every options mapping of the recipe: (plugin kind, plugin name, the mapping, its recipe key)."""
    return [("evolvers", eva.evolver, eva.evolver_options, "eva.evolver_options"),
            *(("reward_models", r.type, r.options, f"{r.key}_options") for r in rewarders(eva)),
            *(("backends", gen.backend, gen.options, f"eva.{key}.options") for key, gen in generations(eva))]


def check_inline_secrets(eva: EvaArguments) -> None:
    """No secret (``api_key``, ``token``, ``password``, …) written inline in an options mapping:
    it would land in manifests; the key belongs in an environment variable (``api_key_env``)."""
    from eva_plugin.secrets import secret_keys

    for where, options in (*((f"{key}.options", gen.options) for key, gen in generations(eva)),
                           ("evolver_options", eva.evolver_options), ("reward_options", eva.reward_options),
                           ("creator_reward_options", eva.creator_reward_options)):
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
BUILTIN_REWARD_TYPES = ("sequence_classification", "embedding", "pairwise", "pairrm")


def rewarders(eva: EvaArguments) -> list:
    """The recipe's reward models: the solver's, and the creator's where it is another one."""
    solver = eva.rewarder("solver")
    return [solver] if eva.one_rewarder() else [solver, eva.rewarder("creator")]


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
    for rewarder in rewarders(eva) if creator is not None else []:
        if rewarder.type not in BUILTIN_REWARD_TYPES:
            continue
        where = f"{rewarder.key}_model"
        check_model_path(rewarder.model, where, hub=hub)
        check_model_files(rewarder.model, where, trust_remote_code=bool(rewarder.options.get("trust_remote_code")))
        if rewarder.type == "sequence_classification":
            check_reward_head(rewarder.model, where)
        if rewarder.type == "pairrm":
            check_pairrm(rewarder.model, where)
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
        switch = (f"{where.removesuffix('_model')}_options.trust_remote_code" if where.endswith("reward_model")
                  else "trust_remote_code")
        raise RecipeError(f"`{where}`: {path} runs its own code ({own} has auto_map); read that code, then set "
                          f"`{switch}: true` to allow it, or use a model transformers supports natively")
    if chat and not model_files.has_chat_template(folder):
        raise RecipeError(f"`{where}`: the tokenizer of {path} has no chat template (no chat_template.jinja, no "
                          "chat_template in tokenizer_config.json); use an instruct model or add its template")


def check_reward_head(path: str | None, where: str = "eva.reward_model") -> None:
    """A ``sequence_classification`` reward model must have a score head: a folder whose config.json
    names only causal-LM architectures would get a randomly initialised one (random rewards). A local
    folder or a hub id already in the cache is read; one not downloaded yet is checked when it loads."""
    from eva_plugin.model_files import causal_lm_only, config_folder

    folder = config_folder(path) if isinstance(path, str) else None
    if folder is None:
        return
    arch = causal_lm_only(folder)
    if arch:
        raise RecipeError(f"`{where}`: {path} is a causal LM ({arch} in config.json), not a reward model; "
                          "its score head would be random. Use a *ForSequenceClassification reward model, or "
                          f"`{where.removesuffix('_model')}_type: pairwise` for a preference LM")


def check_pairrm(path: str | None, where: str) -> None:
    """A ``pairrm`` reward model's config.json (local folder or hub cache) is PairRM-hf's: DeBERTa-v2
    with the prefix token ids and ``n_tasks``."""
    from eva_plugin.model_files import config_folder, read_json
    from eva_plugin.rewards.options import pairrm_config_fault

    folder = config_folder(path) if isinstance(path, str) else None
    config = read_json(folder / "config.json") if folder is not None else None
    if isinstance(config, dict) and (fault := pairrm_config_fault(config)):
        raise RecipeError(f"`{where}`: {path} is not a PairRM checkpoint ({fault}); the pairrm type reads "
                          "the transformers layout of PairRM, llm-blender/PairRM-hf")


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


#: Training keys (DPOConfig / TrainingArguments) that TRL and transformers accept although they cannot
#: train: the range each must be in (``typed.range_problem``: ``ge``/``gt``/``le``/``lt``; a bound also
#: means finite), and the type it must have. A list value (``loss_weights``) is checked item by item.
TRAINING_RULES: dict[str, tuple[str, dict]] = {
    "learning_rate": ("float", {"gt": 0}),
    "num_train_epochs": ("float", {"gt": 0}),  # unless max_steps > 0 (it overrides epochs)
    "max_steps": ("int", {"ge": -1}),  # -1 (or 0): train num_train_epochs
    "per_device_train_batch_size": ("int", {"ge": 1}),
    "per_device_eval_batch_size": ("int", {"ge": 1}),
    "gradient_accumulation_steps": ("int", {"ge": 1}),
    "max_length": ("int | None", {"ge": 2}),  # TRL drops every pair whose prompt alone fills it
    "warmup_steps": ("float", {"ge": 0}),
    "weight_decay": ("float", {"ge": 0}),
    "adam_beta1": ("float", {"ge": 0, "lt": 1}),
    "adam_beta2": ("float", {"ge": 0, "lt": 1}),
    "adam_epsilon": ("float", {"gt": 0}),
    "max_grad_norm": ("float", {"ge": 0}),  # 0: no clipping (transformers); NaN would poison every weight
    "label_smoothing_factor": ("float", {"ge": 0, "lt": 1}),
    "seed": ("int", {"ge": 0, "le": 2**32 - 1}),
    "data_seed": ("int | None", {"ge": 0, "le": 2**32 - 1}),
    "logging_steps": ("float", {"gt": 0}),
    "save_steps": ("float", {"gt": 0}),
    "eval_steps": ("float | None", {"gt": 0}),
    "dataloader_num_workers": ("int", {"ge": 0}),
    "dataset_num_proc": ("int | None", {"ge": 1}),
    "torch_empty_cache_steps": ("int | None", {"ge": 1}),
    "neftune_noise_alpha": ("float | None", {"ge": 0}),
    # the DPO loss
    "beta": ("float", {"gt": 0}),
    "label_smoothing": ("float", {"ge": 0, "le": 0.5}),
    "loss_weights": ("list | None", {"ge": 0}),
    "ld_alpha": ("float | None", {"ge": 0, "le": 1}),
    "f_alpha_divergence_coef": ("float", {"gt": 0}),
    "discopop_tau": ("float", {"gt": 0}),
    "ref_model_mixup_alpha": ("float", {"ge": 0, "le": 1}),
    "ref_model_sync_steps": ("int", {"ge": 1}),
}


def _rule_applies(training, key: str) -> bool:
    """Whether ``key`` is used at all: ``max_steps > 0`` makes transformers ignore ``num_train_epochs``."""
    return not (key == "num_train_epochs" and (getattr(training, "max_steps", -1) or -1) > 0)


def training_problem(key: str, value, annotation: str, bounds: dict) -> str | None:
    """Why ``value`` cannot train as ``key`` (``TRAINING_RULES``), or None."""
    from eva_plugin.typed import range_problem, type_problem

    problem = type_problem(annotation, value)
    if problem is None and isinstance(value, (list, tuple)):
        items = [range_problem(bounds, v) or type_problem("float", v) for v in value]
        problem = next((f"items {p}" for p in items if p), None)
    return problem or range_problem(bounds, value)


def check_training(training) -> None:
    """Every ``TRAINING_RULES`` key of the parsed trainer config (recipe and command line alike), before
    any model loads: one line naming the key, its value and the range it must be in."""
    for key, (annotation, bounds) in TRAINING_RULES.items():
        if not hasattr(training, key) or not _rule_applies(training, key):
            continue
        problem = training_problem(key, getattr(training, key), annotation, bounds)
        if problem:
            hint = " (or set max_steps > 0)" if key == "num_train_epochs" else ""
            raise RecipeError(f"`{key}` {problem}{hint}; change it in the recipe or on the command line")


def generation_budgets(recipe_model: str | None, eva: EvaArguments) -> list[tuple[str, int, str | None, str]]:
    """(recipe key, new tokens asked for, the model that generates them, whose model it is) for every
    sampling the run does with a local model (an ``openai`` backend's server knows its own limit): the
    policy's responses, the evolver's rewrites (the policy when ``evolver_model`` is null), the
    rewriter's (``generation.max_new_tokens`` × the ratio, by the evolver) and the judge's."""
    import math

    evolver = (eva.evolver_model, "evolver's") if eva.evolver_model else (recipe_model, "policy's")
    budgets = [("eva.generation.max_new_tokens", eva.generation, eva.generation.max_new_tokens, recipe_model,
                "policy's"),
               ("eva.evolver_generation.max_new_tokens", eva.evolver_generation,
                eva.evolver_generation.max_new_tokens, *evolver)]
    if eva.rewriter:
        budgets.append(("eva.generation.max_new_tokens × eva.rewriter_max_length_ratio", eva.evolver_generation,
                        math.ceil(eva.generation.max_new_tokens * eva.rewriter_max_length_ratio), *evolver))
    if eva.judge_model:
        budgets.append(("eva.judge_generation.max_new_tokens", eva.judge_generation,
                        eva.judge_generation.max_new_tokens, eva.judge_model, "judge's"))
    return [(key, asked, model, whose) for key, gen, asked, model, whose in budgets if gen.backend != "openai"]


def check_generation_room(recipe_model: str | None, eva: EvaArguments, creator: str | None) -> None:
    """Every ``max_new_tokens`` of an EVA run leaves room for a prompt in the context of the model that
    generates (its ``config.json``), before any model loads; a model whose length is unknown is not checked."""
    if creator is None:
        return  # a plain DPO round samples nothing
    from eva_plugin.model_files import context_length

    for key, asked, model, whose in generation_budgets(recipe_model, eva):
        context = context_length(model)
        if context is not None and asked >= context:
            raise RecipeError(f"`{key}` asks for {asked} new tokens but the {whose} context ({model}) holds "
                              f"{context} tokens, prompt included; lower it below {context}")
