"""Reading Alignment-Handbook / TRL recipe YAML into TRL dataclasses plus ``EvaArguments``.

The Handbook cannot be installed beside transformers 5, so its recipe dialect is read
here: ``dataset_mixture`` (new), ``dataset_mixer``/``dataset_splits`` (old), TRL's own
``datasets:`` list, and keys TRL 1.x renamed or dropped (mapped or ignored, one
warning each, never a crash).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eva_plugin import recipe_yaml
from eva_plugin.checks import check_training, hub_offline
from eva_plugin.command_line import Command, apply_overrides, parse_command
from eva_plugin.config import CREATORS, EvaArguments, eva_arguments, split_rounds
from eva_plugin.dataset_mixture import HANDBOOK, TRL, DatasetSpec, read_mixture
from eva_plugin.errors import RecipeError
from eva_plugin.legacy_keys import DROPPED, RENAMED
from eva_plugin.output_folder import check_output_dir
from eva_plugin.typed import short_repr

logger = logging.getLogger(__name__)

@dataclass
class Recipe:
    """Everything one run needs, parsed and validated before any model loads."""

    creator: str | None
    eva: EvaArguments
    script: Any  # trl.ScriptArguments
    training: Any  # trl.DPOConfig
    model: Any  # trl.ModelConfig
    datasets: list[DatasetSpec] = field(default_factory=list)
    mixture_seed: int = 0
    test_split_size: float | None = None
    mixture_dialect: str = HANDBOOK  # handbook | trl: what dataset weights mean (eva_plugin.dataset_mixture)
    source: str | None = None
    notes: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)  # TRL keys the recipe or command line set

    def loss_knobs(self) -> dict[str, float]:
        """The round's loss knobs (paper defaults < the recipe's own ``beta`` < ``eva.loss_args``).
        With ``eva.loss`` null (the recipe's own TRL loss) only ``nll_alpha``: the rest is the
        recipe's DPOConfig (``loss_type``, ``loss_weights``, ``beta``), fingerprinted with it."""
        from eva_plugin.solver.losses import loss_knobs

        beta = self.training.beta if "beta" in self.explicit else None
        return loss_knobs(self.eva.loss, self.eva.loss_args, beta)

    @property
    def output_dir(self) -> Path:
        return Path(self.training.output_dir)


def _accelerator_precision(cfg: dict[str, Any], notes: list[str]) -> None:
    import torch

    from eva_plugin.modeling import use_cpu_requested

    if use_cpu_requested():  # `accelerate launch --cpu`: the trainer runs on CPU like every other model
        cfg["use_cpu"] = True
    if torch.cuda.is_available() or cfg.get("use_cpu"):
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _other_accelerator():
        # tell accelerate, so that launched processes form a CPU (gloo) group instead of each
        # believing it is alone
        cfg["use_cpu"] = True
    for key in ("bf16", "fp16"):
        if cfg.get(key):
            notes.append(f"`{key}: true` turned off: no GPU on this machine")
    cfg["bf16"], cfg["fp16"] = False, False


def _attention_fallback(model, notes: list[str]) -> None:
    """``attn_implementation: flash_attention_2/3`` where FlashAttention cannot run (no GPU, or
    the package missing) → ``sdpa``, with one note, before any model loads."""
    attn = model.attn_implementation
    if attn not in ("flash_attention_2", "flash_attention_3"):
        return
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if attn == "flash_attention_2":
        usable, package = is_flash_attn_2_available(), "flash-attn"
    else:
        usable, package = is_flash_attn_3_available(), "flash-attn-3"
    if usable:
        return
    why = "no GPU on this machine" if not torch.cuda.is_available() else f"{package} is not installed"
    notes.append(f"`attn_implementation: {attn}` switched to `sdpa`: {why}")
    model.attn_implementation = "sdpa"


def _hub_push(training, notes: list[str]) -> None:
    """``push_to_hub: true`` is honoured at the end of the run (``eva_plugin.dpo``); with
    HF_HUB_OFFLINE set it cannot be, so it is turned off here with one note (the policy stays
    in ``output_dir``) instead of failing after training."""
    if training.push_to_hub and hub_offline():
        notes.append("`push_to_hub: true` turned off: HF_HUB_OFFLINE is set (the final policy stays in output_dir)")
        training.push_to_hub = False


def _other_accelerator() -> bool:
    """An accelerator other than CUDA that accelerate would use (Apple MPS, Intel XPU, Ascend NPU)."""
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return is_mps_available() or is_xpu_available() or is_npu_available()


def read_yaml(config_path: str | None) -> dict[str, Any]:
    """The recipe file as a mapping; a missing file or bad YAML is one line."""
    if not config_path:
        return {}
    try:
        with open(config_path) as fh:
            cfg = recipe_yaml.load(fh) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {config_path} not found; pass --config PATH to an existing YAML") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe {config_path} is a folder; pass --config PATH to a YAML file") from None
    except recipe_yaml.RecipeYAMLError as err:
        raise RecipeError(f"recipe {config_path}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {config_path} is not valid YAML: {_first_line(err)}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe {config_path} is not UTF-8 text (byte {err.start}: "
                          f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8") from None
    if not isinstance(cfg, dict):
        raise RecipeError(f"recipe {config_path} must be a YAML mapping")
    return cfg


def _first_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem}{where}"


#: ``env:`` may set variables with these prefixes only (threads, kernels, caches, logging, and the network
#: interfaces and transports of the process groups: ``NCCL_SOCKET_IFNAME``, ``NCCL_IB_HCA``, ``GLOO_SOCKET_IFNAME``).
ENV_PREFIXES = ("CUDA_", "NCCL_", "GLOO_", "TOKENIZERS_", "OMP_", "MKL_", "PYTORCH_", "TORCH_", "HF_",
                "TRANSFORMERS_", "WANDB_", "VLLM_")
#: ``env:`` variables that redirect where credentials are read or sent, or where traffic goes: refused
#: unless the recipe's ``env_allow:`` list names them (a recipe from elsewhere must not reroute a token).
REDIRECTING = ("HF_ENDPOINT", "HF_HOME", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "WANDB_BASE_URL", "WANDB_HOST",
               "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
REDIRECTING_SUFFIXES = ("_PROXY", "_ENDPOINT", "_BASE_URL", "_CA_BUNDLE")


def env_names(block: Any, allow: Any) -> set[str]:
    """Check the recipe's ``env:`` mapping against the rules (``ENV_PREFIXES``, never a secret nor an
    *_OFFLINE switch, ``REDIRECTING`` only when ``allow`` — the recipe's ``env_allow:`` list — names it);
    the allow-listed names."""
    from eva_plugin.secrets import is_secret_key

    if not isinstance(block, dict):
        raise RecipeError(f"`env` must be a mapping of environment variables, got {short_repr(block)}")
    if not isinstance(allow, list) or not all(isinstance(name, str) for name in allow):
        raise RecipeError(f"`env_allow` must be a list of variable names, got {short_repr(allow)}")
    allowed = {name.upper() for name in allow}
    for key in map(str, block):
        if not key or "=" in key or "\0" in key:
            raise RecipeError(f"env: {short_repr(key)} is not an environment variable name (empty, or holding "
                              "`=` or a NUL byte); name one variable per key")
        upper = key.upper()
        if is_secret_key(key) or upper.endswith("_OFFLINE"):
            raise RecipeError(f"env.{key}: a recipe may set only {', '.join(p + '*' for p in ENV_PREFIXES)} "
                              "variables, never a secret or an *_OFFLINE switch; set it in the shell instead")
        if upper in REDIRECTING or upper.endswith(REDIRECTING_SUFFIXES):
            if upper in allowed:
                continue
            raise RecipeError(f"env.{key} redirects where credentials or traffic go; set it in the shell, or "
                              f"list it in `env_allow: [{key}]` beside `env:` if this recipe must set it")
        if not upper.startswith(ENV_PREFIXES):
            raise RecipeError(f"env.{key}: a recipe may set only {', '.join(p + '*' for p in ENV_PREFIXES)} "
                              "variables, never a secret or an *_OFFLINE switch; set it in the shell instead")
    for key, value in block.items():
        if "\0" in str(value):
            raise RecipeError(f"env.{key}: the value holds a NUL byte, which no environment variable can hold")
    return allowed


def _set_env(block: Any, allow: Any = None) -> None:
    """The recipe's ``env:`` mapping into ``os.environ``, once every name passed ``env_names``."""
    env_names(block, [] if allow is None else allow)
    for key, value in block.items():
        os.environ[str(key)] = str(value)


def check_run_name(run_name: Any) -> None:
    """``run_name`` names a TensorBoard folder under ``output_dir/runs``: no path separator, no ``..``."""
    if run_name is None:
        return
    name = str(run_name)
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise RecipeError(f"`run_name` {short_repr(name)} holds a path separator or `..`; it names a folder "
                          "under output_dir/runs: use a plain name (e.g. my-run-1)")


def read_eva_side(cfg: dict[str, Any], eva_overrides: dict[str, Any], cli_creator: str | None,
                  cli_keys: set[str]) -> tuple[str | None, EvaArguments]:
    """``creator:`` and the ``eva:`` block, fully checked (plugins included) without importing TRL."""
    creator = cfg.pop("creator", None)
    creator = cli_creator if cli_creator is not None else creator
    creator = None if creator is None else str(creator).lower()
    if creator is not None and creator not in CREATORS:
        raise RecipeError(f"unknown creator {short_repr(creator)}; known: {', '.join(CREATORS)} (or leave it out)")
    eva_block = cfg.pop("eva", None) or {}
    if not isinstance(eva_block, dict):
        raise RecipeError(f"`eva` must be a mapping of eva keys, got {short_repr(eva_block)}")
    eva = eva_arguments(apply_overrides(eva_block, eva_overrides))
    _resolve_loss(eva, cfg, cli_keys)
    if creator is not None and eva.reward_model is None:
        raise RecipeError(f"`creator: {creator}` needs `eva.reward_model` (a local reward model path)")
    return creator, eva


def _resolve_loss(eva: EvaArguments, cfg: dict[str, Any], cli_keys: set[str]) -> None:
    """``eva.loss`` null: the recipe's own TRL ``loss_type``/``loss_weights`` where it sets one, else dpo.
    Both set: they must agree. A command-line ``--loss_type`` counts as set (its value is TRL's)."""
    from eva_plugin.solver.losses import check_recipe_loss, loss_knobs

    own = (set(cfg) | cli_keys) & {"loss_type", "loss_weights"}
    if eva.loss is None and not own:
        eva.loss = "dpo"
    if eva.loss is not None and own:
        on_cli = own & cli_keys
        loss_type = "(command line)" if "loss_type" in on_cli else cfg.get("loss_type")
        weights = "(command line)" if "loss_weights" in on_cli else cfg.get("loss_weights")
        check_recipe_loss(eva.loss, loss_type, weights)
    loss_knobs(eva.loss, eva.loss_args)


def load_recipe(argv: list[str] | None = None, *, path: str | os.PathLike | None = None) -> Recipe:
    """A recipe from a command line (``eva_plugin.command_line``: ``--config file`` or the recipe as
    the first argument, or ``path``), with its overrides."""
    command = parse_command(list(argv or []))
    if path is not None:
        command.config = str(path)
    return build_recipe(command)


def build_recipe(command: Command) -> Recipe:
    """Read ``command.config`` and apply the command line. Everything on the EVA side (file, YAML,
    ``creator``, ``eva:`` values, plugin names and options, dataset keys) is checked before TRL,
    transformers or torch is imported."""
    config_path, rest, notes = command.config, list(command.trl_args), list(command.notes)
    cfg = read_yaml(config_path)
    cli_keys = {a[2:].split("=", 1)[0] for a in rest if a.startswith("--")}
    creator, eva = read_eva_side(cfg, command.eva_overrides, command.creator, cli_keys)

    for old, new in RENAMED.items():
        if old in cfg:
            value = cfg.pop(old)
            if new not in cfg:
                cfg[new] = value
            notes.append(f"`{old}` is now `{new}`")
    for old, why in DROPPED.items():
        if old in cfg:
            cfg.pop(old)
            notes.append(f"`{old}` ignored: {why}")
    mixture = read_mixture(cfg, notes)
    _set_env(cfg.pop("env", None) or {}, cfg.pop("env_allow", None) or [])

    from trl import DPOConfig, ModelConfig, ScriptArguments, TrlParser  # the EVA side is checked: now TRL

    _accelerator_precision(cfg, notes)
    if cfg.get("report_to") is not None:
        cfg["report_to"] = _installed_reporters(cfg["report_to"], notes)
    dataclass_types = (ScriptArguments, DPOConfig, ModelConfig)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    _unknown_keys(cfg, known)
    explicit = set(cfg) | cli_keys
    parser = TrlParser(dataclass_types)

    def refuse(message: str):  # argparse would print its usage and exit: one line instead
        raise RecipeError(f"recipe {config_path}: {message.splitlines()[0]}")

    parser.error = refuse  # type: ignore[method-assign]
    parser.set_defaults_with_config(**cfg)
    try:
        with warnings.catch_warnings():
            # transformers 5 still honours the Handbook's `gradient_checkpointing*` keys (they mirror
            # `activation_checkpointing*`); its FutureWarning would come before any error line
            warnings.filterwarnings("ignore", message=r"`gradient_checkpointing(_kwargs)?` is deprecated",
                                    category=FutureWarning)
            script, training, model = parser.parse_args_into_dataclasses(args=rest)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"recipe {config_path}: {str(err).splitlines()[0] if str(err) else err!r}") from None
    check_training(training)
    check_run_name(training.run_name)
    _attention_fallback(model, notes)
    _hub_push(training, notes)
    specs, mixture_dialect, mixture_seed = mixture.datasets, mixture.dialect, mixture.seed
    if mixture_dialect == TRL:
        mixture_seed = training.seed  # TRL's mixture has no seed of its own; the test split uses the recipe's
    if script.dataset_name and not specs:
        specs = [DatasetSpec(path=script.dataset_name, config=script.dataset_config, split=script.dataset_train_split)]
        mixture_dialect, mixture_seed = TRL, training.seed  # TRL's scripts: load_dataset(name, config), no shuffle
    if eva.prompts:
        specs = [DatasetSpec(path=eva.prompts, split="train")]
    if config_path:
        for spec in specs:
            spec.path = _beside_recipe(spec.path, Path(config_path).parent)
    from eva_plugin.embedded import resolve

    model.model_name_or_path = resolve(model.model_name_or_path)
    eva.reward_model = resolve(eva.reward_model)
    eva.creator_reward_model = resolve(eva.creator_reward_model)
    eva.evolver_model = resolve(eva.evolver_model)
    eva.judge_model = resolve(eva.judge_model)
    if creator is not None and not model.model_name_or_path:
        raise RecipeError("recipe has no `model_name_or_path`; set it to the policy checkpoint")
    if not specs:
        raise RecipeError("recipe names no data: set `dataset_mixture`, `datasets`, `dataset_name` or `eva.prompts`")
    check_output_dir(training.output_dir, data=[p for s in specs for p in s.local_paths()] + [eva.eval_prompts or ""],
                     eva_run=creator is not None)
    if creator is not None:
        _check_eval_prompts(eva.eval_prompts, specs, Path(config_path).parent if config_path else Path())
        if eva.eval_prompts or mixture.test_split_size:
            _check_eval_reward(eva)
        check_ordered_splits(creator, eva, specs, notes)
    for note in notes:
        logger.warning("recipe: %s", note)
    if int(os.environ.get("RANK", "0")) == 0:  # once per run, not once per process
        logger.info("recipe: %s", effective_batch_line(training))
    return Recipe(
        creator=creator, eva=eva, script=script, training=training, model=model, datasets=specs,
        mixture_seed=mixture_seed, test_split_size=mixture.test_split_size, mixture_dialect=mixture_dialect,
        source=config_path, notes=notes, explicit=explicit,
    )


def effective_batch_line(training, processes: int | None = None) -> str:
    """Sequences per optimiser step: per device × accumulation × processes (``WORLD_SIZE`` of the launch)."""
    processes = processes if processes is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_device, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
    return (f"effective batch {per_device * accumulation * processes} = {per_device} per device × {accumulation} "
            f"accumulation × {processes} process{'es' if processes != 1 else ''}")


def _check_eval_reward(eva: EvaArguments) -> None:
    """The held-out evaluation compares mean rewards across rounds; a judge that scores a response only
    against the prompt's other samples (pairwise, pairrm) gives every prompt the same mean."""
    rewarder = eva.rewarder("creator")
    if rewarder.type in ("pairwise", "pairrm"):
        raise RecipeError(f"the held-out evaluation needs a reward that compares across rounds, but {rewarder.key}"
                          f"_type {rewarder.type} scores a response only against its prompt's other samples (every "
                          "mean is the same); set eva.creator_reward_model to a point-wise reward model (it "
                          "scores the evaluation), or drop eval_prompts / test_split_size")


def _unknown_keys(cfg: dict[str, Any], known: set[str]) -> None:
    """A top-level key that no TRL dataclass has is an error, as in TRL's own parser (legacy keys in
    ``RENAMED``/``DROPPED`` were mapped or dropped before); the message names close matches."""
    import difflib

    unknown = sorted(set(map(str, cfg)) - known)
    if not unknown:
        return
    key = unknown[0]
    ours = {"eva", "creator", "env", "env_allow", "dataset_mixture"}
    close = difflib.get_close_matches(key, sorted(known | ours), n=3)
    hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else \
        " (`--help` lists every key; eva keys go under `eva:`)"
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise RecipeError(f"unknown recipe key `{key}`{more}: not a ScriptArguments/DPOConfig/ModelConfig "
                      f"field{hint}")


def _check_eval_prompts(eval_prompts: str | None, specs: list[DatasetSpec], recipe_dir: Path) -> None:
    """``eva.eval_prompts`` must not be the seed data (the same file, or the same content elsewhere):
    every seed prompt would be held out of training, and the evaluation would measure nothing held out."""
    from eva_plugin.content import content_id

    if not eval_prompts:
        return
    held = Path(_beside_recipe(eval_prompts, recipe_dir))
    if not held.exists():
        return  # iter_0/eval_prompts says so when it reads it
    held_id = content_id(str(held))
    for seed in (p for spec in specs for p in spec.local_paths()):
        if Path(seed).resolve() == held.resolve() or content_id(seed) == held_id:
            raise RecipeError(f"`eva.eval_prompts` {eval_prompts} is the seed data itself ({seed}, same "
                              f"{'file' if Path(seed).resolve() == held.resolve() else 'content'}); hold out "
                              "other prompts, or drop eva.eval_prompts and set test_split_size")


def check_ordered_splits(creator: str, eva: EvaArguments, specs: list[DatasetSpec], notes: list[str]) -> None:
    """``eva.splits: ordered`` gives the t-th seed split the run draws to the t-th dataset of the mixture:
    one dataset for each split (fewer: refused; more: the rest are never trained on, noted)."""
    if eva.splits != "ordered":
        return
    rounds = split_rounds(creator, eva)
    if len(specs) < len(rounds):
        single = " (eva.prompts replaces the mixture with one file)" if eva.prompts else ""
        raise RecipeError(
            f"eva.splits: ordered makes each dataset of the mixture one round's seed split, but the run draws "
            f"{len(rounds)} seed split(s) (rounds {', '.join(map(str, rounds))}) and the mixture has "
            f"{len(specs)} dataset(s){single}; list one dataset per split under dataset_mixture, lower "
            "eva.iterations, or set eva.splits: shuffled")
    unused = [s.path for s in specs[len(rounds):]]
    if unused:
        notes.append(f"eva.splits: ordered: the run draws {len(rounds)} seed split(s), so the mixture's "
                     f"last {len(unused)} dataset(s) ({', '.join(unused)}) are never trained on")


def _beside_recipe(path: str, recipe_dir: Path) -> str:
    """A relative data path that is not there from the working directory is read beside the recipe."""
    if Path(path).is_absolute() or Path(path).exists() or not (recipe_dir / path).exists():
        return path
    return str(recipe_dir / path)


def _installed_reporters(report_to: Any, notes: list[str]) -> Any:
    """Keep only logging integrations that are installed (Handbook recipes name wandb/tensorboard)."""
    import importlib.util

    if isinstance(report_to, str):
        if report_to in ("none", "all"):
            return report_to
        report_to = [report_to]
    modules = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
               "trackio": "trackio", "clearml": "clearml", "dvclive": "dvclive"}
    kept = []
    for name in report_to:
        module = modules.get(name, name)
        if importlib.util.find_spec(module) is None:
            notes.append(f"`report_to: {name}` dropped: {module} is not installed")
        else:
            kept.append(name)
    return kept or "none"
