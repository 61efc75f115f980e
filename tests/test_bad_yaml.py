"""YAML a user can get wrong (issue 20, class 3), removed keys that are not unknown keys (class 8) and
quiet errors (class 9): duplicate keys name both lines, deep nesting and alias bombs are refused while
the file is read, overrides onto a non-mapping and a second recipe are one line, ``env:`` names are
names; an unchanged Handbook recipe runs with ``creator: eva``; no library warning comes before the line.

The cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from catalogue import Case, Ctx, ModelLoaded, assert_case, install_model_spy, raw, recipe, write

from eva_plugin import cli, dpo
from eva_plugin.command_line import apply_overrides
from eva_plugin.errors import RecipeError
from eva_plugin.legacy_keys import DROPPED, RENAMED
from eva_plugin.recipe import load_recipe

POOL = "iter_0/seed_pool"
APO = Path(__file__).parent / "data" / "handbook" / "apo.yaml"
APO_SHA256 = "a0f6d78cc7eed8de474dcd70c9786b1d06fb5af470dafc3de4f62740e34acbca"


def _bomb(levels: int = 9, flow: bool = False) -> str:
    """A "billion laughs": each level an anchor holding nine aliases of the one before (9^levels values)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(lines) + "}" if flow else "\n".join("    " + line for line in lines)


def _appended(text: str, *extra: str):
    """The base recipe with ``text`` appended (a second block of a key it already has)."""
    def build(ctx: Ctx) -> list[str]:
        path = ctx.write()
        path.write_text(path.read_text() + text)
        return ["--config", str(path), *extra]
    return build


def _two_recipes(ctx: Ctx) -> list[str]:
    return [str(ctx.write("a.yaml")), "--config", str(ctx.write("b.yaml"))]


def _second_recipe_after_config(ctx: Ctx) -> list[str]:
    return ["--config", str(ctx.write("a.yaml")), str(ctx.write("b.yaml"))]


def _huge_value(ctx: Ctx) -> list[str]:
    path = ctx.write()
    path.write_text(path.read_text().replace("  iterations: 2", "  iterations: [" + ", ".join(["7"] * 20000) + "]"))
    return ["--config", str(path)]


def _library_output_to_stderr(ctx: Ctx, monkeypatch) -> None:
    """Show what the real command prints: warnings, and the datasets loggers' lines, on this stderr (pytest
    records warnings, and the loggers' handler holds the stderr of the moment it was made)."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    warnings.simplefilter("always", FutureWarning)  # pytest restores the filters after each test
    datasets_logger = logging.getLogger("datasets")
    monkeypatch.setattr(datasets_logger, "handlers", [*datasets_logger.handlers, logging.StreamHandler(sys.stderr)])


def _broken_prompts(ctx: Ctx) -> list[str]:
    prompts = write(ctx.tmp, "broken.jsonl", '{"prompt": "write a poem"}\n{"prompt": "oops"\n')
    return ["--config", str(ctx.write(eva={"prompts": str(prompts)}))]


BOMB_FILE = "eva:\n  reward_options:\n" + _bomb() + "\n"
DEEP = "eva:\n  reward_options:\n    x: " + "[" * 5000 + "]" * 5000 + "\n"

YAML: dict[str, Case] = {
    # duplicate keys: an error naming the key and both lines, at any depth
    "duplicate-top-level-key": Case(raw("seed: 1\nlearning_rate: 0.1\nseed: 2\n"),
                                    "duplicate key `seed` (lines 1 and 3)"),
    "second-eva-block": Case(_appended("eva:\n  iterations: 5\n"), "duplicate key `eva`"),
    "duplicate-nested-key": Case(raw("eva:\n  generation:\n    max_new_tokens: 4\n    max_new_tokens: 8\n"),
                                 "duplicate key `max_new_tokens` (lines 3 and 4)"),
    "duplicate-key-in-list-entry": Case(raw("dataset_mixture:\n  datasets:\n    - id: a.jsonl\n      split: train\n"
                                            "      id: b.jsonl\n"), "duplicate key `id` (lines 3 and 5)"),
    "duplicate-flow-key": Case(raw("eva: {iterations: 1, iterations: 2}\n"),
                               "duplicate key `iterations` (line 1, twice)"),
    # size: refused while the file is read, in well under a second
    "nesting-too-deep": Case(raw(DEEP), "nesting deeper than 64 levels"),
    "alias-bomb": Case(raw(BOMB_FILE), "expands to more than 100000 values"),
    "alias-bomb-on-the-command-line": Case(recipe("--eva.reward_options", _bomb(flow=True)),
                                           "expands to more than 100000 values"),
    "alias-recursive": Case(raw("eva:\n  reward_options: &a {x: *a}\n"), "refers to the value it is in"),
    "huge-value-cut-in-the-line": Case(_huge_value, "eva.iterations"),
    # the command line
    "override-onto-null": Case(recipe("--eva.generation", "null", "--eva.generation.max_new_tokens", "5"),
                               "--eva.generation sets it to null"),
    "override-onto-null-after": Case(recipe("--eva.generation.max_new_tokens", "5", "--eva.generation", "null"),
                                     "--eva.generation sets it to null"),
    "override-onto-scalar": Case(recipe("--eva.generation", "3", "--eva.generation.max_new_tokens", "5"),
                                 "--eva.generation sets it to 3"),
    "two-recipes": Case(_two_recipes, "two recipes given"),
    "second-recipe-after-config": Case(_second_recipe_after_config, "two recipes given"),
    # env: names
    "env-name-with-equals": Case(recipe(env={"CUDA_VISIBLE_DEVICES=0": 1}), "not an environment variable name"),
    "env-name-with-nul": Case(recipe(env={"CUDA_\0VISIBLE": 1}), "not an environment variable name"),
    "env-name-empty": Case(recipe(env={"": 1}), "not an environment variable name"),
    "env-value-with-nul": Case(recipe(env={"OMP_NUM_THREADS": "1\0"}), "NUL byte"),
}

REMOVED: dict[str, Case] = {
    # removed keys are dropped with a note: the run goes on (here: to its seed pool)
    "overwrite-output-dir": Case(recipe("--stop_after", POOL, overwrite_output_dir=True), None),
    "overwrite-output-dir-flag": Case(recipe("--overwrite_output_dir", "--stop_after", POOL), None),
    "per-gpu-batch-size": Case(recipe("--stop_after", POOL, per_gpu_train_batch_size=2), None),
    "removed-transformers-keys": Case(recipe("--stop_after", POOL, use_mps_device=False, logging_dir="logs",
                                             save_safetensors=True, tpu_num_cores=None), None),
    # a key that no version knew is still an error, after the removed ones were dropped
    "unknown-after-removed": Case(recipe(overwrite_output_dir=True, overwrite_outptu_dir=True),
                                  "overwrite_outptu_dir"),
}

QUIET: dict[str, Case] = {
    # the error is the only line: no FutureWarning of transformers, no datasets reader log before it
    "gradient-checkpointing-warning": Case(recipe(gradient_checkpointing=True, output_dir="/"), "`output_dir` /",
                                           setup=_library_output_to_stderr),
    "gradient-checkpointing-kwargs-warning": Case(recipe(gradient_checkpointing_kwargs={"use_reentrant": True},
                                                         output_dir="/"), "`output_dir` /",
                                                  setup=_library_output_to_stderr),
    "json-reader-log": Case(_broken_prompts, "line 2 is not valid JSON", setup=_library_output_to_stderr),
}

CASES: dict[str, Case] = {
    **{name: replace(case, group="20.3") for name, case in YAML.items()},
    **{name: replace(case, group="20.8") for name, case in REMOVED.items()},
    **{name: replace(case, group="20.9") for name, case in QUIET.items()},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


# class 3: the reader


def test_a_bomb_is_refused_in_time_proportional_to_the_file():
    from eva_plugin import recipe_yaml

    start = time.perf_counter()
    with pytest.raises(recipe_yaml.RecipeYAMLError, match="expands to more than"):
        recipe_yaml.load(BOMB_FILE)
    with pytest.raises(recipe_yaml.RecipeYAMLError, match="nesting deeper"):
        recipe_yaml.load(DEEP)
    assert time.perf_counter() - start < 2


def test_what_yaml_allows_still_loads():
    from eva_plugin import recipe_yaml

    text = ("base: &base {lr: 0.1, seed: 1}\nrun:\n  <<: *base\n  seed: 2\nlist: [*base, *base]\n"
            "same_key_elsewhere: {seed: 3}\n")
    assert recipe_yaml.load(text) == {"base": {"lr": 0.1, "seed": 1}, "run": {"lr": 0.1, "seed": 2},
                                      "list": [{"lr": 0.1, "seed": 1}] * 2, "same_key_elsewhere": {"seed": 3}}
    assert recipe_yaml.load("x: " + "[" * 60 + "]" * 60) is not None
    shared = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 90) + "]\n"
    assert len(recipe_yaml.load(shared)["b"]) == 90  # 91k values: under the limit


def test_an_error_line_never_floods(write_recipe, capsys, monkeypatch):
    """A value of 20,000 items is named in a few dozen characters (and any line is capped)."""
    from eva_plugin.errors import one_line

    monkeypatch.chdir(write_recipe().parent)
    install_model_spy(monkeypatch)
    assert dpo.main(_huge_value(Ctx(write_recipe().parent, write_recipe, Path(), {}))) == 2
    line = capsys.readouterr().err.strip()
    assert "eva.iterations" in line and len(line) < 300, line
    assert len(one_line("x\n" * 5000)) == 1000 and "\n" not in one_line("a\nb")


def test_a_block_and_a_key_inside_it_on_the_command_line():
    assert apply_overrides({"generation": {"batch_size": 2}}, {"generation.max_new_tokens": 5,
                                                               "generation": {"top_p": 0.5}}) == \
        {"generation": {"top_p": 0.5, "max_new_tokens": 5}}  # the block first, whatever the order
    with pytest.raises(RecipeError, match="sets it to null"):
        apply_overrides({}, {"generation": None, "generation.max_new_tokens": 5})


def test_eva_run_keeps_the_command_line_as_written(write_recipe, capsys, monkeypatch):
    """``eva run --config R`` and ``eva run R --config S`` reach the recipe parser unchanged (argparse had
    put the bare words first: the first failed, the second switched recipes)."""
    install_model_spy(monkeypatch)
    with pytest.raises(ModelLoaded):
        cli.main(["run", "--config", str(write_recipe())])
    assert cli.main(["run", str(write_recipe("a.yaml")), "--config", str(write_recipe("b.yaml"))]) == 2
    assert "two recipes given" in capsys.readouterr().err


# class 8: removed keys


def test_removed_keys_are_dropped_with_one_note_each(write_recipe):
    recipe_ = load_recipe(["--config", str(write_recipe(overwrite_output_dir=True, per_gpu_eval_batch_size=3,
                                                        logging_dir="x")), "--use_mps_device"])
    notes = "\n".join(recipe_.notes)
    assert recipe_.training.per_device_eval_batch_size == 3
    assert notes.count("overwrite_output_dir") == 1 and "--overwrite_stale" in notes, notes
    assert "logging_dir" in notes and "use_mps_device" in notes


def test_removed_keys_are_not_fields_today():
    """A key that transformers / TRL still has is not removed: the lists follow the installed versions."""
    import dataclasses

    from trl import DPOConfig, ModelConfig, ScriptArguments

    fields = {f.name for t in (DPOConfig, ModelConfig, ScriptArguments) for f in dataclasses.fields(t)}
    assert not (set(RENAMED) | set(DROPPED)) & fields
    assert set(RENAMED.values()) <= fields


def test_the_handbooks_apo_recipe_runs_unchanged(tmp_path, models, prompts_file, monkeypatch, caplog):
    """``recipes/smollm3/dpo/apo.yaml`` of the Alignment Handbook, verbatim (it sets the removed
    ``overwrite_output_dir``), with ``creator: eva`` passes every recipe check: the run goes on until it
    loads its first model. The command line points it at the tiny local models and prompts."""
    text = APO.read_text()
    verbatim = text[text.index("# Config for 2 node"):]  # below our header: the Handbook's file, byte for byte
    assert hashlib.sha256(verbatim.encode()).hexdigest().startswith(APO_SHA256) and len(verbatim) == 1516
    assert "overwrite_output_dir: true" in verbatim and "creator" not in verbatim
    monkeypatch.chdir(tmp_path)
    install_model_spy(monkeypatch)
    argv = [str(APO), "--creator", "eva", "--model_name_or_path", str(models["policy"]), "--output_dir",
            str(tmp_path / "out"), "--eva.prompts", str(prompts_file), "--eva.reward_model", str(models["reward"])]
    with caplog.at_level(logging.WARNING, logger="eva_plugin"), pytest.raises(ModelLoaded):
        dpo.main(argv)
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe: ")]
    assert sum("overwrite_output_dir" in n for n in notes) == 1, notes
    assert not any("unknown" in n for n in notes)


# class 9: the real command prints one line


def test_the_real_command_prints_one_line(tmp_path, write_recipe, prompts_file):
    """In a real process (library warnings and loggers as a user sees them): a refusal after TRL parsed the
    recipe (the Handbook's ``gradient_checkpointing``) and a broken prompt file are one line each."""
    broken = write(tmp_path, "broken.jsonl", '{"prompt": "write a poem"}\n{"prompt": "oops"\n')
    first = write_recipe("first.yaml", gradient_checkpointing=True, output_dir="/")
    second = write_recipe("second.yaml", gradient_checkpointing=True, eva={"prompts": str(broken)})
    script = ("import sys\nfrom eva_plugin import dpo\n"
              f"rc = dpo.main(['--config', {str(first)!r}])\nprint('--', file=sys.stderr)\n"
              f"rc += dpo.main(['--config', {str(second)!r}, '--stop_after', {POOL!r}])\nsys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    parts = [[line for line in part.splitlines() if line.strip()] for part in done.stderr.split("--\n")]
    assert done.returncode == 4 and len(parts) == 2, done.stderr
    assert [len(p) for p in parts] == [1, 1], done.stderr
    assert parts[0][0].startswith("eva: error: `output_dir` /") and "line 2 is not valid JSON" in parts[1][0]
