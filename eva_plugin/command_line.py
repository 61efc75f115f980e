"""The one command line of ``eva run RECIPE …`` and ``python -m eva_plugin.dpo --config RECIPE …``.

``make_parser`` declares every flag we own — the recipe (positional or ``--config``), ``--creator``,
``--stop_after``, ``--overwrite_stale``, the help flags, one ``--eva.KEY`` per ``eva:`` key (values
are YAML: ``--eva.iterations 2``, ``--eva.generation.options '{base_url: …}'``) and the legacy TRL /
transformers flags that were renamed or removed. argparse splits the command line: what it does not
know is TRL's (``--learning_rate 1e-6``) and goes to ``TrlParser`` with the recipe
(``eva_plugin.recipe.build_recipe``). Imports nothing heavy, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from eva_plugin import recipe_yaml
from eva_plugin.config import NESTED, EvaArguments, GenerationArguments
from eva_plugin.errors import RecipeError
from eva_plugin.legacy_keys import DROPPED, RENAMED
from eva_plugin.typed import short_repr


@dataclass
class Command:
    """A parsed command line: the recipe file, our own flags, the ``eva:`` overrides and TRL's flags."""

    config: str | None = None
    creator: str | None = None
    stop_after: str | None = None
    overwrite_stale: bool = False
    help: bool = False
    help_trl: bool = False
    eva_overrides: dict[str, Any] = field(default_factory=dict)  # dotted key → value
    trl_args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # legacy flags mapped or dropped


def eva_flags() -> list[str]:
    """Every dotted ``eva:`` key a flag can set: each field, and each field of the sampling blocks."""
    names = []
    for f in dataclasses.fields(EvaArguments):
        names.append(f.name)
        if f.name in NESTED:
            names.extend(f"{f.name}.{g.name}" for g in dataclasses.fields(GenerationArguments))
    return names


def _yaml_value(text: str) -> Any:
    try:
        return recipe_yaml.load(text)
    except recipe_yaml.RecipeYAMLError as err:
        raise argparse.ArgumentTypeError(err.problem) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise argparse.ArgumentTypeError(f"{short_repr(text)} is not a YAML value ({problem})") from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse that raises ``RecipeError`` (one line) instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise RecipeError(message.splitlines()[0])


def make_parser(prog: str = "python -m eva_plugin.dpo") -> argparse.ArgumentParser:
    """The parser of our flags; ``parse_known_args`` leaves TRL's flags in the remainder."""
    parser = _OneLineParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--config", help="the recipe YAML")
    parser.add_argument("--creator")
    parser.add_argument("--stop_after")
    parser.add_argument("--overwrite_stale", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--help-trl", dest="help_trl", action="store_true")
    for name in eva_flags():
        parser.add_argument(f"--eva.{name}", dest=f"eva.{name}", type=_yaml_value, default=argparse.SUPPRESS,
                            metavar="VALUE")
    for old in (*RENAMED, *DROPPED):  # a bare flag (`--no_cuda`) means true, as in TRL's parser
        parser.add_argument(f"--{old}", dest=f"legacy.{old}", nargs="?", const="true", default=argparse.SUPPRESS)
    return parser


def parse_command(argv: list[str], prog: str = "python -m eva_plugin.dpo") -> Command:
    """``argv`` as a ``Command``; a malformed flag is one ``RecipeError`` line. The recipe is ``--config PATH``
    or the first argument (``eva run RECIPE …``): TRL's flags are unknown to this parser, so a later bare
    word may be one of their values."""
    recipe = argv[0] if argv and not argv[0].startswith("-") else None
    namespace, rest = make_parser(prog).parse_known_args(argv[1:] if recipe else argv)
    values = vars(namespace)
    if recipe and values["config"] and recipe != values["config"]:
        raise RecipeError(f"two recipes given ({recipe} and --config {values['config']}); pass one")
    other = _bare_recipe(rest)
    if other and (values["config"] or recipe):
        raise RecipeError(f"two recipes given ({values['config'] or recipe} and {other}); pass one")
    unknown_eva = [a.split("=", 1)[0] for a in rest if a.startswith("--eva.")]
    if unknown_eva:
        raise RecipeError(f"unknown flag {unknown_eva[0]}: not an eva key (`--help` lists them; options mappings "
                          "take YAML, e.g. --eva.generation.options '{base_url: http://host/v1}')")
    command = Command(config=values["config"] or recipe, creator=values["creator"],
                      stop_after=values["stop_after"], overwrite_stale=values["overwrite_stale"],
                      help=values["help"], help_trl=values["help_trl"], trl_args=list(rest))
    for key, value in values.items():
        if key.startswith("eva."):
            command.eva_overrides[key[len("eva."):]] = value
        elif key.startswith("legacy."):
            old = key[len("legacy."):]
            if old in RENAMED:
                command.trl_args += [f"--{RENAMED[old]}", str(value)]
                command.notes.append(f"`--{old}` is now `--{RENAMED[old]}`")
            else:
                command.notes.append(f"`--{old}` ignored: {DROPPED[old]}")
    return command


def _bare_recipe(rest: list[str]) -> str | None:
    """A YAML file name among the words argparse left for TRL that is no flag's value: a second recipe."""
    for i, word in enumerate(rest):
        follows_flag = i > 0 and rest[i - 1].startswith("--") and "=" not in rest[i - 1]
        if word.lower().endswith((".yaml", ".yml")) and not word.startswith("-") and not follows_flag:
            return word
    return None


def apply_overrides(eva_block: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``eva:`` mapping with the command line's ``--eva.KEY`` values set; a value replaces the
    recipe's whole value (``--eva.generation.options '{…}'`` replaces the options mapping). A block set on the
    command line is applied before the keys set inside it, whatever their order; a key inside a block that
    the command line sets to something other than a mapping is refused (one of the two flags is wrong)."""
    block = dict(eva_block)
    for dotted, value in sorted(overrides.items(), key=lambda item: item[0].count(".")):
        *parents, last = dotted.split(".")
        target = block
        for depth, part in enumerate(parents):
            inner = target.get(part)
            parent = ".".join(parents[:depth + 1])
            if parent in overrides and not isinstance(overrides[parent], dict):
                given = "null" if overrides[parent] is None else short_repr(overrides[parent])
                raise RecipeError(f"--eva.{dotted} sets a key inside `eva.{parent}`, but --eva.{parent} sets it "
                                  f"to {given}; drop one flag or give the block as a "
                                  f"mapping (--eva.{parent} '{{{last}: …}}')")
            if inner is None:
                inner = {}
            if not isinstance(inner, dict):
                raise RecipeError(f"--eva.{dotted}: `eva.{part}` is {short_repr(inner)}, not a mapping")
            target[part] = inner = dict(inner)
            target = inner
        target[last] = value
    return block
