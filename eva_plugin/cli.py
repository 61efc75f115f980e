"""The ``eva`` command: ``eva run RECIPE [overrides]`` and ``eva plugins``."""

from __future__ import annotations

import argparse
import sys

from eva_plugin import plugins


def list_plugins() -> None:
    for kind in plugins.KINDS:
        print(f"{kind}:")
        for name, entry in sorted(plugins.registry(kind).items()):
            print(f"  {name:<24} {entry.source}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="eva", description="EVA iterative preference optimisation for TRL recipes")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a recipe (same as accelerate launch -m eva_plugin.dpo --config RECIPE)")
    run_p.add_argument("recipe", help="recipe YAML")
    sub.add_parser("plugins", help="list every registered proxy, selector, evolver, reward model and backend")
    args, rest = parser.parse_known_args(argv)
    if args.command == "plugins":
        list_plugins()
        return 0
    from eva_plugin import dpo

    return dpo.main(["--config", args.recipe, *rest])


if __name__ == "__main__":
    sys.exit(main())
