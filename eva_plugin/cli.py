"""The ``eva`` command: ``eva run RECIPE [overrides]`` and ``eva plugins``."""

from __future__ import annotations

import argparse
import sys

from eva_plugin import plugins


def list_plugins() -> None:
    """Every registered name of every kind with its source, then the plugins left out."""
    from eva_plugin.errors import EvaError

    for kind in plugins.KINDS:
        print(f"{kind}:")
        try:
            table = plugins.registry(kind)
        except EvaError as err:  # e.g. two plugins registered one name: the other kinds still list
            print(f"  error: {err}")
            continue
        for name, entry in sorted(table.items()):
            print(f"  {name:<24} {entry.source}")
    for entry in plugins.skipped():
        print(entry.line())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="eva", description="EVA iterative preference optimisation for TRL recipes")
    sub = parser.add_subparsers(dest="command", required=True)
    # `eva run RECIPE --help` is answered by eva_plugin.dpo (every eva: key), so `run` has no argparse help
    run_p = sub.add_parser("run", add_help=False,
                           help="run a recipe (same as accelerate launch -m eva_plugin.dpo --config RECIPE); "
                                "`eva run --help` lists every option")
    run_p.add_argument("recipe", nargs="?", help="recipe YAML")
    sub.add_parser("plugins", help="list every registered proxy, selector, evolver, reward model and backend")
    args, rest = parser.parse_known_args(argv)
    if args.command == "plugins":
        list_plugins()
        return 0
    from eva_plugin import dpo

    if args.recipe is None or args.recipe.startswith("-"):
        if args.recipe is not None:
            rest.insert(0, args.recipe)
        if not {"-h", "--help", "--help-trl"} & set(rest):
            parser.error("run needs a RECIPE (a YAML file); `eva run --help` lists every option")
        return dpo.main(rest, prog="eva run RECIPE")
    return dpo.main(["--config", args.recipe, *rest], prog="eva run RECIPE")


if __name__ == "__main__":
    sys.exit(main())
