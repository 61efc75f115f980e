"""The ``eva`` command: ``eva run RECIPE [overrides]``, ``eva plugins``, ``eva report RUN_DIR`` and
``eva compare RUN_A RUN_B``."""

from __future__ import annotations

import argparse
import dataclasses
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
            if kind == "backends" and name == "vllm":
                from eva_plugin.generation.vllm_engines import build_info

                print(f"  {'':<24} installed: {build_info()}")
            if kind in plugins.BUILT_KINDS:
                schema = plugins.options_schema(kind, name)
                names = ", ".join(f.name for f in dataclasses.fields(schema)) or "none"
                print(f"  {'':<24} options: {names}")
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
    if argv[:1] == ["run"]:  # verbatim: argparse would reorder `--config X` behind the bare words
        from eva_plugin import dpo

        return dpo.main(argv[1:], prog="eva run RECIPE")
    parser = argparse.ArgumentParser(prog="eva", description="EVA iterative preference optimisation for TRL recipes")
    sub = parser.add_subparsers(dest="command", required=True)
    # everything after `run` is eva_plugin.dpo's command line (eva_plugin.command_line), `--help` included
    run_p = sub.add_parser("run", add_help=False,
                           help="run a recipe (same as accelerate launch -m eva_plugin.dpo --config RECIPE); "
                                "`eva run --help` lists every option")
    run_p.add_argument("args", nargs=argparse.REMAINDER, help="RECIPE [--eva.KEY VALUE …] [--TRL_FIELD VALUE …]")
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

    return dpo.main([*args.args, *rest], prog="eva run RECIPE")


if __name__ == "__main__":
    sys.exit(main())
