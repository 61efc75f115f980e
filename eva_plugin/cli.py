"""The ``eva`` command: ``eva run RECIPE [overrides]``, ``eva plugins``, ``eva report RUN_DIR`` and
``eva compare RUN_A RUN_B``."""

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


def report_command(args) -> int:
    """``eva report`` / ``eva compare``: matplotlib and datasets are imported only here."""
    from pathlib import Path

    from eva_plugin import report

    if args.command == "compare":
        for run in (args.run_a, args.run_b):
            if not Path(run).is_dir():
                print(f"eva compare: {run} is not a folder", file=sys.stderr)
                return 2
        print(report.compare_text(Path(args.run_a), Path(args.run_b)))
        return 0
    if not Path(args.run_dir).is_dir():
        print(f"eva report: {args.run_dir} is not a folder", file=sys.stderr)
        return 2
    data = report.collect(Path(args.run_dir))
    out = report.write_report(Path(args.run_dir), Path(args.out) if args.out else None, data)
    print(report.text_report(data, Path(args.run_dir)))
    print(f"\nreport: {out / 'report.md'} ({out / 'report.html'}, {out / 'report.json'})")
    return 0


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
    report_p = sub.add_parser("report", help="write RUN_DIR/report/ (report.md, report.html, report.json, "
                                             "PNG plots) from a run's artifacts, finished, stopped or crashed")
    report_p.add_argument("run_dir", help="a run's output_dir")
    report_p.add_argument("--out", help="the report folder (default: RUN_DIR/report)")
    compare_p = sub.add_parser("compare", help="two runs side by side (e.g. EVA vs `creator: none`)")
    compare_p.add_argument("run_a")
    compare_p.add_argument("run_b")
    args, rest = parser.parse_known_args(argv)
    if args.command == "plugins":
        list_plugins()
        return 0
    if args.command in ("report", "compare"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return report_command(args)
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
