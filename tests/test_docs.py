"""``--help`` and the README ``eva:`` table come from the EvaArguments metadata, fast and in sync."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from eva_plugin import docs
from eva_plugin.config import EvaArguments

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("trl", "transformers", "torch", "datasets")


def test_readme_table_matches_the_dataclass_metadata():
    readme = (ROOT / "README.md").read_text()
    assert docs.with_table(readme) == readme, "README eva: table is stale: run `python -m eva_plugin.docs`"
    assert docs.main([str(ROOT / "README.md"), "--check"]) == 0


def test_the_generator_rewrites_a_stale_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{docs.START}\n| old |\n{docs.END}\n\nafter\n")
    assert docs.main([str(readme), "--check"]) == 1
    assert docs.main([str(readme)]) == 0
    text = readme.read_text()
    assert "| old |" not in text and "| `generation.temperature` | 0.7 |" in text and text.endswith("after\n")
    assert docs.main([str(readme), "--check"]) == 0


def test_every_eva_key_is_listed_with_help_and_default():
    keys = {k.name: k for k in docs.eva_keys()}
    top = {f.name for f in dataclasses.fields(EvaArguments)} - {"generation", "evolver_generation", "judge_generation"}
    assert top <= set(keys)
    assert keys["evolver_generation.temperature"].default == 0.88 and keys["generation.temperature"].default == 0.7
    assert keys["judge_generation.temperature"].default == 0.0
    assert all(k.help for k in keys.values())
    text = docs.help_text()
    for name, key in keys.items():
        assert f"--eva.{name} " in text and f"(default: {docs.show(key.default)})" in text
    for flag in ("--config", "--creator", "--stop_after", "--overwrite_stale", "--help-trl"):
        assert flag in text
    assert "ScriptArguments, DPOConfig and ModelConfig" in text


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
