"""Run the whole bad-input catalogue (``tests/catalogue.py``), each case in its own process, and
count the outcomes per class: how many bad inputs end in one clear line before any model loads,
one line only after a model loaded, a traceback, a silent acceptance or a wrong result, or a hang.

    python benchmarks/bad_input_catalogue.py                  # every case, 2 at a time
    python benchmarks/bad_input_catalogue.py --only training  # cases whose name contains it
    python benchmarks/bad_input_catalogue.py --code /tmp/old  # the eva_plugin of another checkout

The tests assert the wanted outcome of each case; this script measures where the code stands
(``--code`` runs an older checkout's package on today's catalogue: the numbers before a change).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
OUTCOMES = ("one line before any model", "one line after a model loaded", "handled", "noisy error",
            "traceback", "accepted silently", "wrong result", "hang")
NOT_WITH_OLD_CODE = {"test_bad_run_folder::output-dir-root": "a package that accepts it writes a whole run into /"}
"""Cases that ``--code`` does not run: accepting them would harm this machine (counted apart)."""


def setup(root: Path) -> None:
    """The tiny models and the prompt file every case builds on."""
    from conftest import TOPICS

    from eva_plugin.testing import make_tiny_encoder, make_tiny_policy, make_tiny_reward_model

    make_tiny_policy(root / "models" / "policy")
    make_tiny_reward_model(root / "models" / "reward")
    make_tiny_encoder(root / "models" / "encoder")
    with open(root / "prompts.jsonl", "w") as fh:
        for i, topic in enumerate(TOPICS):
            fh.write(json.dumps({"prompt": f"write {i + 1} sentences about {topic}", "category": "writing"}) + "\n")


def use_code(code: str) -> None:
    """Swap this process's ``eva_plugin`` for the one in ``code`` after the catalogue was imported
    with today's (a test module may import names an older package lacks): every name the test
    modules took from ``eva_plugin`` is rebound to the older package's, where it has one."""
    import importlib
    import types

    tests = [m for n, m in list(sys.modules.items()) if n.startswith(("test_", "catalogue", "conftest"))]
    for mod in [n for n in sys.modules if n == "eva_plugin" or n.startswith("eva_plugin.")]:
        del sys.modules[mod]
    sys.path.insert(0, str(Path(code).resolve()))
    importlib.invalidate_caches()
    for test in tests:
        for key, value in list(vars(test).items()):
            if isinstance(value, types.ModuleType) and value.__name__.startswith("eva_plugin"):
                with contextlib.suppress(ImportError):
                    setattr(test, key, importlib.import_module(value.__name__))
            elif getattr(value, "__module__", "").startswith("eva_plugin"):
                with contextlib.suppress(ImportError):
                    old = importlib.import_module(value.__module__)
                    setattr(test, key, getattr(old, value.__qualname__.split(".")[0], value))


def run_one(name: str, root: Path, code: str | None = None) -> dict:
    """Run one case in this process (a child of the benchmark) and describe what happened."""
    import pytest
    from catalogue import Ctx, collect, error_lines, install_model_spy
    from conftest import _recipe_writer

    case = collect()[name]
    if code:
        use_code(code)
    from eva_plugin import dpo

    folder = root / "cases" / name.replace("::", "__")
    folder.mkdir(parents=True)
    models = {key: root / "models" / key for key in ("policy", "reward", "encoder")}
    ctx = Ctx(folder, _recipe_writer(folder, models, root / "prompts.jsonl"), root / "prompts.jsonl", models)
    os.chdir(folder)
    argv = case.build(ctx)
    loads: list = []
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch:
        if case.setup is not None:
            case.setup(ctx, monkeypatch)
        install_model_spy(monkeypatch, loads)
        with contextlib.redirect_stderr(stderr):
            try:
                rc = dpo.main(argv)
            except BaseException:  # what the real process would print and exit with
                traceback.print_exc()
                rc = 1
    err = stderr.getvalue()
    checked = None
    if case.check is not None:
        try:
            case.check(ctx)
            checked = True
        except BaseException:
            checked = False
    return {"rc": rc, "lines": error_lines(err), "traceback": "Traceback" in err, "loaded": bool(loads),
            "checked": checked, "expect": case.expect, "group": case.group, "exit": case.exit_code}


def outcome(result: dict | None) -> str:
    if result is None:
        return "hang"
    if result["traceback"]:
        return "traceback"
    one_line = len(result["lines"]) == 1 and result["lines"][0].startswith("eva: ")
    if result["rc"] == 0:
        if result["expect"] is not None:
            return "accepted silently"
        return "handled" if result["checked"] in (None, True) else "wrong result"
    if result["rc"] == result.get("exit", 2) and one_line and result["checked"] is not False:
        if result["expect"] is None:  # a run-folder fault may end in one line that says what to do,
            return "handled" if result["checked"] else "wrong result"  # if its check holds (not any refusal)
        return "one line after a model loaded" if result["loaded"] else "one line before any model"
    return "noisy error" if result["rc"] == result.get("exit", 2) else "traceback"


def spawn(name: str, root: Path, code: str | None, timeout: float) -> tuple[str, dict | None]:
    command = [sys.executable, __file__, "--one", name, "--root", str(root)] + (["--code", code] if code else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return name, None
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        return name, json.loads(last[0])
    except json.JSONDecodeError:  # the child itself died (a crash outside dpo.main)
        return name, {"rc": done.returncode, "lines": [], "traceback": True, "loaded": False, "checked": None,
                      "expect": "?", "group": "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a case counts as a hang")
    parser.add_argument("--code", help="a checkout whose eva_plugin to run instead of this one")
    parser.add_argument("--verbose", action="store_true", help="print each case's outcome")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        result = run_one(args.one, Path(args.root), args.code)
        print(json.dumps(result))
        return
    from catalogue import collect

    names = [name for name in collect() if args.only in name]
    if args.code:
        for name in [n for n in names if n in NOT_WITH_OLD_CODE]:
            print(f"not run with --code: {name} ({NOT_WITH_OLD_CODE[name]})")
            names.remove(name)
    with tempfile.TemporaryDirectory(prefix="eva-catalogue-") as tmp:
        root = Path(tmp)
        setup(root)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = dict(pool.map(lambda n: spawn(n, root, args.code, args.timeout), names))
    cases = collect()
    table: dict[str, Counter] = defaultdict(Counter)
    for name, result in results.items():
        found = outcome(result)
        table[cases[name].group][found] += 1
        if args.verbose:
            line = (result or {}).get("lines", [""])[-1:] or [""]
            print(f"{found:30} {name}  {line[0][:140]}")
    print(f"{'class':24}" + "".join(f"{o[:14]:>16}" for o in OUTCOMES) + f"{'total':>8}")
    for group in sorted(table):
        counts = table[group]
        print(f"{group:24}" + "".join(f"{counts[o]:16d}" for o in OUTCOMES) + f"{sum(counts.values()):8d}")
    total = sum(table.values(), Counter())
    print(f"{'all':24}" + "".join(f"{total[o]:16d}" for o in OUTCOMES) + f"{sum(total.values()):8d}")


if __name__ == "__main__":
    main()
