"""Run-folder integrity (issue 20, class 6): a damaged finished stage is rebuilt on resume, never a
traceback; ``output_dir`` never points at something that is not a run's; clean-up removes only what
the project made; ``data_files`` are fingerprinted by content; Ctrl-C is one line.

The cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from catalogue import Case, Ctx, assert_case, write

from eva_plugin import dpo
from eva_plugin.artifacts import damaged, file_hashes, remove_leftovers
from eva_plugin.output_folder import check_output_dir

POOL = "iter_0/seed_pool"


def _finished(ctx: Ctx, stop: str = POOL, **top) -> list[str]:
    """A run that finished up to ``stop``; the same command line resumes it."""
    argv = ["--config", str(ctx.write(**top)), "--stop_after", stop]
    assert dpo.main(argv) == 0
    return argv


def _out(ctx: Ctx) -> Path:
    return ctx.tmp / "out"


def _damage(stop: str, damage) -> callable:
    def build(ctx: Ctx) -> list[str]:
        argv = _finished(ctx, stop, **({"creator": "none"} if "policy" in stop else {}))
        damage(_out(ctx) / stop)
        return argv
    return build


def _rebuilt(stage: str, name: str):
    """The check: ``stage`` was made again (its old folder set aside) and ``name`` in it is intact."""
    def check(ctx: Ctx) -> None:
        folder = _out(ctx) / stage
        manifest = json.loads((folder / "manifest.json").read_text())
        assert isinstance(manifest, dict) and damaged(folder, manifest) == ""
        assert any(folder.parent.glob(f".{folder.name}.stale-*")), "the damaged folder is kept aside"
        assert any(f == name or f.startswith(name) for f in manifest["files"]), manifest["files"]
    return check


def _truncate(pattern: str):
    def damage(folder: Path) -> None:
        target = next(folder.glob(pattern))
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return damage


def _manifest(text: str):
    def damage(folder: Path) -> None:
        (folder / "manifest.json").write_text(text)
    return damage


def _output_dir(make) -> callable:
    def build(ctx: Ctx) -> list[str]:
        return ["--config", str(ctx.write(output_dir=str(make(ctx))))]
    return build


def _project_root(ctx: Ctx) -> Path:
    (ctx.tmp / "proj").mkdir()
    write(ctx.tmp / "proj", "pyproject.toml", "[project]\nname = 'x'\n")
    return ctx.tmp / "proj"


def _folder_with_notes(ctx: Ctx) -> Path:
    (ctx.tmp / "mine").mkdir()
    write(ctx.tmp / "mine", "notes.txt", "keep me")
    return ctx.tmp / "mine"


def _data_folder(ctx: Ctx) -> list[str]:
    data = ctx.tmp / "data"
    data.mkdir()
    prompts = write(data, "p.jsonl", ctx.prompts.read_text())
    return ["--config", str(ctx.write(output_dir=str(data), eva={"prompts": str(prompts)}))]


def _home(ctx: Ctx, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(ctx.tmp / "home"))
    (ctx.tmp / "home").mkdir()


def _json_mixture(ctx: Ctx) -> list[str]:
    """A TRL mixture that reads a local file through the `json` builder; the file then changes."""
    data = write(ctx.tmp, "rows.jsonl", ctx.prompts.read_text())
    path = ctx.write(dataset_mixture=None, datasets=[{"path": "json", "data_files": str(data), "split": "train"}])
    argv = ["--config", str(path), "--stop_after", POOL]
    assert dpo.main(argv) == 0
    data.write_text(ctx.prompts.read_text().replace("the moon", "the sun"))
    return argv


def _user_files_in_the_run(ctx: Ctx) -> list[str]:
    (_out(ctx) / "iter_0").mkdir(parents=True)
    write(_out(ctx) / "iter_0", ".notes.tmp-keep", "mine")
    write(_out(ctx), ".plan.tmp-keep", "mine")
    return ["--config", str(ctx.write()), "--stop_after", POOL]


def _user_files_kept(ctx: Ctx) -> None:
    assert (_out(ctx) / "iter_0" / ".notes.tmp-keep").read_text() == "mine"
    assert (_out(ctx) / ".plan.tmp-keep").read_text() == "mine"


def _interrupt(ctx: Ctx, monkeypatch) -> None:
    from eva_plugin import prompt_sets

    def ctrl_c(*args, **kwargs):  # what Python raises when the user presses Ctrl-C in a stage
        raise KeyboardInterrupt

    monkeypatch.setattr(prompt_sets.SeedPool, "work", ctrl_c)


G = "20.6"
CASES: dict[str, Case] = {
    # a damaged finished stage is rebuilt on resume
    "manifest-a-list": Case(_damage(POOL, _manifest("[1, 2]")), None, check=_rebuilt(POOL, "data/")),
    "manifest-a-string": Case(_damage(POOL, _manifest('"done"')), None, check=_rebuilt(POOL, "data/")),
    "manifest-not-json": Case(_damage(POOL, _manifest("{not json")), None, check=_rebuilt(POOL, "data/")),
    "arrow-truncated": Case(_damage(POOL, _truncate("data/*.arrow")), None, check=_rebuilt(POOL, "data/")),
    "dataset-state-edited": Case(_damage(POOL, _truncate("data/state.json")), None,
                                 check=_rebuilt(POOL, "data/state.json")),
    "safetensors-truncated": Case(_damage("iter_1/policy", _truncate("*.safetensors")), None,
                                  check=_rebuilt("iter_1/policy", "model"), after_load=True),
    # output_dir that is not a run's folder
    "output-dir-root": Case(_output_dir(lambda ctx: "/"), "`output_dir` / "),
    "output-dir-home": Case(_output_dir(lambda ctx: ctx.tmp / "home"), "home folder", setup=_home),
    "output-dir-project-root": Case(_output_dir(_project_root), "project's root"),
    "output-dir-foreign-files": Case(_output_dir(_folder_with_notes), "notes.txt"),
    "output-dir-holds-the-data": Case(_data_folder, "holds the run's data"),
    # clean-up, fingerprints, Ctrl-C
    "leftover-look-alikes-kept": Case(_user_files_in_the_run, None, check=_user_files_kept),
    "json-data-files-changed": Case(_json_mixture, "iter_0/seed_pool was made with a different config"),
    "interrupted": Case(lambda ctx: ["--config", str(ctx.write())], "interrupted; run the same command to resume",
                        setup=_interrupt, exit_code=130),
}
CASES = {name: replace(case, group=G) for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_case(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


def test_an_interrupted_run_resumes(tmp_path, write_recipe, monkeypatch, capsys):
    """After the one line, the same command goes on: nothing of the interrupted stage is left."""
    from eva_plugin import prompt_sets

    argv = ["--config", str(write_recipe()), "--stop_after", POOL]
    work = prompt_sets.SeedPool.work
    monkeypatch.setattr(prompt_sets.SeedPool, "work", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert dpo.main(argv) == 130
    monkeypatch.setattr(prompt_sets.SeedPool, "work", work)
    assert dpo.main(argv) == 0
    assert not [p for p in (tmp_path / "out" / "iter_0").iterdir() if p.name.startswith(".")]


def test_file_hashes_name_the_damage(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data", "a.arrow", "abc")
    write(tmp_path, "manifest.json", "{}")
    manifest = {"files": file_hashes(tmp_path)}
    assert list(manifest["files"]) == ["data/a.arrow"]  # the manifest is not its own content
    assert damaged(tmp_path, manifest) == ""
    assert damaged(tmp_path, {}) == ""  # a manifest from before the record: trusted as before
    write(tmp_path / "data", "a.arrow", "abd")
    assert damaged(tmp_path, manifest) == "data/a.arrow changed"
    (tmp_path / "data" / "a.arrow").unlink()
    assert damaged(tmp_path, manifest) == "data/a.arrow is missing"


def test_only_the_projects_leftovers_are_removed(tmp_path):
    ours = [tmp_path / "iter_1" / ".policy.tmp-abc_12", tmp_path / "iter_1" / ".manifest.json.x1y2.tmp",
            tmp_path / "iter_1" / "pairs" / ".manifest.json.q9.tmp"]
    theirs = [tmp_path / ".notes.tmp-1", tmp_path / "iter_1" / ".backup.tmp-x", tmp_path / "iter_x" / ".policy.tmp-a",
              tmp_path / "iter_1" / "pairs" / ".pairs.tmp-z"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(remove_leftovers(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_a_plain_dpo_round_may_write_into_a_used_folder(tmp_path):
    """TRL's own scripts write the checkpoint into output_dir whatever it holds; only EVA runs insist."""
    write(tmp_path, "notes.txt", "x")
    check_output_dir(str(tmp_path), eva_run=False)
    with pytest.raises(ValueError, match="notes.txt"):
        check_output_dir(str(tmp_path), eva_run=True)
