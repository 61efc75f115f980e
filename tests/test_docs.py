"""``--help`` and the generated tables of docs/ come from the code's declarations, fast and in sync;
the README stays short and every relative link in the docs points at a file that exists."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from eva_plugin import docs, stage_list
from eva_plugin.config import NESTED, EvaArguments, GenerationArguments

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("trl", "transformers", "torch", "datasets")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_generated_tables_are_current():
    config, run_folder = (ROOT / "docs" / "configuration.md").read_text(), (ROOT / "docs" / "run-folder.md").read_text()
    assert docs.with_table(config) == config, "docs/configuration.md is stale: run `python -m eva_plugin.docs`"
    assert docs.with_tables(run_folder) == run_folder, "docs/run-folder.md is stale: run `python -m eva_plugin.docs`"
    assert docs.STAGES_START in run_folder and docs.START in config
    assert docs.main(["--check"]) == 0  # the default targets are these two pages
    assert docs.main([str(ROOT / "docs" / "configuration.md"), str(ROOT / "docs" / "run-folder.md"), "--check"]) == 0


def test_the_generator_rewrites_stale_tables(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# x\n\n{docs.START}\n| old |\n{docs.END}\n\nmiddle\n\n{docs.STAGES_START}\n| old |\n"
                    f"{docs.STAGES_END}\n\nafter\n")
    assert docs.main([str(page), "--check"]) == 1
    assert docs.main([str(page)]) == 0
    text = page.read_text()
    assert "| old |" not in text and "| `temperature` | 0.7 |" in text and "| `iter_<t>/evolved` |" in text
    assert "\n\nmiddle\n\n" in text and text.endswith("after\n")
    assert docs.main([str(page), "--check"]) == 0
    (tmp_path / "plain.md").write_text("no markers\n")
    try:
        docs.main([str(tmp_path / "plain.md"), "--check"])
    except ValueError as err:
        assert "markers" in str(err)
    else:
        raise AssertionError("a page without markers must be refused")


def test_the_config_table_lists_every_key_once():
    table = docs.config_table()
    first = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| `")]
    top = [f.name for f in dataclasses.fields(EvaArguments) if f.name not in NESTED]
    for name in top:
        assert first.count(f"| `{name}`") == 1, name
    for f in dataclasses.fields(GenerationArguments):
        assert first.count(f"| `{f.name}`") == (2 if f.name in dict(docs.differing_defaults()) else 1), f.name
    for block in NESTED:
        assert f"`{block}`" in table and f"`{block}.temperature`" not in table
    assert "| `temperature` | 0.7 | 0.88 | 0.0 |" in table and "| `max_new_tokens` | 2048 | 666 | 16 |" in table
    assert [name for name, _ in docs.differing_defaults()] == ["temperature", "top_p", "max_new_tokens"]


def test_the_stage_table_has_every_stage_in_order():
    table = docs.stage_table()
    rows = [line for line in table.splitlines()[2:]]
    assert [re.search(r"`iter_(?:0|<t>)/(\w+)`", row).group(1) for row in rows] == list(stage_list.ORDER)
    assert set(stage_list.DATA_COLUMNS) == set(stage_list.ORDER)
    assert "`iter_0/seed_pool` (was `iter_0/prompts`)" in table
    for spec in stage_list.STAGES:
        assert spec.holds in table


def test_every_eva_key_is_in_help_with_its_default():
    keys = {k.name: k for k in docs.eva_keys()}
    top = {f.name for f in dataclasses.fields(EvaArguments)} - set(NESTED)
    assert top <= set(keys)
    assert keys["evolver_generation.temperature"].default == 0.88 and keys["generation.temperature"].default == 0.7
    assert keys["judge_generation.temperature"].default == 0.0
    assert all(k.help for k in keys.values())
    text = docs.help_text()
    for name, key in keys.items():
        block, _, field_name = name.rpartition(".")
        if block and block != docs.GENERATION and key.default == keys[f"{docs.GENERATION}.{field_name}"].default:
            # the same default as generation's: listed once, under generation
            assert f"--eva.{name} " not in text
            name = f"{docs.GENERATION}.{field_name}"
        line = next(line for line in text.splitlines() if line.startswith(f"  --eva.{name} "))
        assert line.endswith(f"(default: {docs.show(key.default)})"), line
        if "." not in name or name.startswith(f"{docs.GENERATION}."):
            assert " ".join(key.help.split()[:4]) in " ".join(text.split()), name  # its help follows
    for block in NESTED:
        assert f"--eva.{block}.KEY" in text
    for flag in ("--config", "--creator", "--stop_after", "--overwrite_stale", "--help-trl"):
        assert flag in text
    assert "ScriptArguments, DPOConfig and ModelConfig" in text


def test_the_readme_is_short_and_names_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "`make test`" in readme  # .ci/run runs the README's test command
    for command in ("eva run recipe.yaml", "accelerate launch -m eva_plugin.dpo --config recipe.yaml", "make demo"):
        assert command in readme


def test_relative_links_point_at_files():
    link = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
    broken = []
    for page in PAGES:
        for target in link.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
    assert len(PAGES) > 5


def test_the_readme_recipe_parses(tmp_path, monkeypatch):
    from eva_plugin.recipe import load_recipe

    yaml_blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (tmp_path / "recipe.yaml").write_text(yaml_blocks[0])
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(["--config", "recipe.yaml"])
    assert recipe.creator == "eva" and recipe.eva.iterations == 3 and recipe.eva.generation.backend == "vllm"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_imports_no_heavy_library():
    for call in ("from eva_plugin import dpo; dpo.main(['--help'])",
                 "from eva_plugin import cli; cli.main(['run', 'r.yaml', '--help'])"):
        out = _run(f"import sys; {call}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
        assert out.returncode == 0, out.stderr
        assert "--eva.generation.temperature" in out.stdout
        assert out.stdout.strip().endswith("[]"), out.stdout[-200:]


def test_help_trl_prints_trls_own_parser_help():
    assert "--beta" in docs.trl_help()


def test_the_options_table_lists_every_declared_option_of_every_builtin():
    from eva_plugin import plugins

    table = docs.options_table()
    for kind in docs.OPTIONS_KEYS:
        for name in plugins.names(kind):
            for f in dataclasses.fields(plugins.options_schema(kind, name)):
                assert f"| `{name}` | `{docs.OPTIONS_KEYS[kind]}` | `{f.name}` |" in table, (name, f.name)
    assert docs.OPTIONS_START in (docs.CONFIGURATION).read_text()
