"""The bad-input catalogue's harness (issues 13 and 20), shared by the ``test_bad_*`` modules and
``benchmarks/bad_input_catalogue.py``.

A ``Case`` builds its inputs under a fresh folder and returns the command line. Most cases are
refusals: ``eva_plugin.dpo.main`` must end with exit code 2 and one line on stderr
(``eva: error: …`` containing ``expect``), never a traceback, and before any model or tokenizer is
loaded (a spy replaces ``from_pretrained``). A case with ``after_load`` may refuse only once a
model ran (a reward model's output, a trained policy's weights); a case with ``check`` is a run
that must end well (exit 0) and leave what ``check`` asserts (a stage rebuilt, a row counted).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODULES = ("test_bad_inputs", "test_bad_training", "test_bad_yaml", "test_bad_plugin_outputs",
           "test_bad_models_data", "test_bad_run_folder", "test_bad_secrets")
"""The test modules whose ``CASES`` make up the catalogue (the benchmark reads them all)."""


class ModelLoaded(AssertionError):
    """A model or tokenizer load was attempted: the input should have been refused before."""


@dataclass
class Ctx:
    """What a case builds with: its own folder, the recipe writer (``write(eva=…, **top)``), the
    shared prompt file and the tiny models (``policy``, ``reward``, ``encoder``)."""

    tmp: Path
    write: Callable[..., Path]
    prompts: Path
    models: dict[str, Path]


@dataclass(frozen=True)
class Case:
    build: Callable[[Ctx], list[str]]
    expect: str | None
    """A fragment of the one error line (it must blame the case's own fault); None: the run ends well."""
    group: str = "issue 13"
    """Which class of bad input it is (issue 20 numbers its classes); the benchmark counts by group."""
    check: Callable[[Ctx], None] | None = None
    """For a run that ends well or refuses: asserts what the run folder holds afterwards."""
    after_load: bool = False
    """The fault only shows once a model loaded or ran: no spy, the refusal may come after stages."""
    setup: Callable[[Ctx, Any], None] | None = None
    """``setup(ctx, monkeypatch)`` before the run: environment or a fault to inject (a Ctrl-C)."""
    exit_code: int = 2
    """The exit status of the refusal (130: interrupted)."""


def write(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def raw(text: str | bytes, *extra: str) -> Callable[[Ctx], list[str]]:
    """A case whose recipe file is exactly ``text``."""
    def build(ctx: Ctx) -> list[str]:
        return ["--config", str(write(ctx.tmp, "raw.yaml", text)), *extra]
    return build


def recipe(*extra: str, eva: dict | None = None, **top) -> Callable[[Ctx], list[str]]:
    """A case whose recipe is the base recipe with ``eva`` keys and top-level keys changed."""
    def build(ctx: Ctx) -> list[str]:
        return ["--config", str(ctx.write(eva=eva, **top)), *extra]
    return build


def edited(edit: Callable[[dict, Ctx], None], *extra: str) -> Callable[[Ctx], list[str]]:
    """A case whose recipe is the base recipe after ``edit(mapping, ctx)`` (for values the writer's
    keywords cannot express: a key removed, a non-mapping ``eva``)."""
    def build(ctx: Ctx) -> list[str]:
        path = ctx.write()
        cfg = yaml.safe_load(path.read_text())
        edit(cfg, ctx)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return ["--config", str(path), *extra]
    return build


def install_model_spy(monkeypatch, calls: list | None = None) -> None:
    """Make every ``from_pretrained`` of the Auto classes raise ``ModelLoaded`` or, given ``calls``,
    append to it and go on (the benchmark records when a model loaded instead of stopping)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()  # progress bars are not error lines
    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel", "AutoTokenizer"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained

        def spy(*args, _original=original, **kwargs):
            if calls is None:
                raise ModelLoaded(f"a model was loaded: {args[:1]}")
            calls.append(str(args[:1]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_case(case: Case, ctx: Ctx, capsys, monkeypatch) -> None:
    """Run one case in this process and assert its behaviour (the catalogue's test body)."""
    from eva_plugin import dpo

    monkeypatch.chdir(ctx.tmp)
    argv = case.build(ctx)
    if case.setup is not None:
        case.setup(ctx, monkeypatch)
    if not case.after_load:
        install_model_spy(monkeypatch)
    capsys.readouterr()
    rc = dpo.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if case.expect is None:
        assert rc == 0, err
    else:
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("eva: "), err
        assert rc == case.exit_code, err
        assert case.expect.lower() in lines[0].lower(), lines[0]  # the line blames the case's own fault
    if case.check is not None:
        case.check(ctx)


def collect() -> dict[str, Case]:
    """Every case of the catalogue, named ``module::case``."""
    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import importlib

    cases: dict[str, Case] = {}
    for module in MODULES:
        try:
            found = importlib.import_module(module).CASES
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        cases.update({f"{module}::{name}": case for name, case in found.items()})
    return cases
