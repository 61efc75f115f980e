"""Resume trusts contents, not paths: a prompt file or model replaced at the same path is stale."""

from __future__ import annotations

import json
import shutil

import pytest

from eva_plugin import content
from eva_plugin.dpo import run_recipe as run
from eva_plugin.errors import StaleArtifactError
from eva_plugin.recipe import load_recipe
from eva_plugin.testing import make_tiny_policy


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_content_id_of_files_folders_and_names(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    first = content.content_id(f)
    assert first.startswith("sha256:") and content.content_id(f) == first
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"1" * 10)
    (folder / "sub").mkdir()
    (folder / "sub" / "y").write_text("y")
    before = content.content_id(folder)
    (folder / "x.bin").write_bytes(b"2" * 10)  # same size, same path, new bytes
    assert content.content_id(folder) != before
    (folder / "x.bin").write_bytes(b"1" * 10)
    assert content.content_id(folder) == before  # same content, same id
    (folder / "sub" / "y").rename(folder / "sub" / "z")
    assert content.content_id(folder) != before
    assert content.content_id("org/some-model") == "org/some-model"
    assert content.local_id("org/some-model") == "org/some-model"
    assert content.local_id(str(f)) == f"{f}@{first}"
    assert content.content_id(None) is None


def test_the_hash_cache_makes_a_second_call_cheap(tmp_path, monkeypatch):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"w" * (content.CHUNK + 5))  # more than one chunk
    calls = []
    real = content.hash_file
    monkeypatch.setattr(content, "hash_file", lambda p: calls.append(p) or real(p))
    first = content.content_id(f)
    assert content.content_id(f) == first and len(calls) == 1
    entries = json.loads(content.cache_path().read_text())  # on disk, for the next run
    assert str(tmp_path / "cache") in str(content.cache_path())
    assert [k for k in entries if k.startswith(str(f.resolve()) + "|")]
    assert first == "sha256:" + entries[next(iter(entries))]
    # a new process (an empty memory) reads the file and does not hash again
    monkeypatch.setattr(content, "_memory", {})
    monkeypatch.setattr(content, "_loaded", set())
    assert content.content_id(f) == first and len(calls) == 1
    f.write_bytes(b"v" * (content.CHUNK + 5))
    assert content.content_id(f) != first and len(calls) == 2


def _recipe(write_recipe, tmp_path, **top):
    return load_recipe(["--config", str(write_recipe(output_dir=str(tmp_path / "out"), **top))])


def test_replaced_prompt_file_makes_the_seed_pool_stale(write_recipe, tmp_path, prompts_file):
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(prompts_file, prompts)
    top = {"dataset_mixture": {"datasets": [{"id": str(prompts), "split": "train", "weight": 1.0}], "seed": 0}}
    run(_recipe(write_recipe, tmp_path, **top), stop_after="iter_0/seed_pool")
    manifest = tmp_path / "out" / "iter_0" / "seed_pool" / "manifest.json"
    made = manifest.stat().st_mtime_ns
    run(_recipe(write_recipe, tmp_path, **top), stop_after="iter_0/seed_pool")  # unchanged: skipped
    assert manifest.stat().st_mtime_ns == made
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join(reversed(lines)).replace("sentences", "words") + "\n")
    with pytest.raises(StaleArtifactError, match=r"iter_0/seed_pool was made with a different config \(changed: "
                                                 r"contents"):
        run(_recipe(write_recipe, tmp_path, **top), stop_after="iter_0/seed_pool")


def test_replaced_policy_weights_make_the_samples_stale(write_recipe, tmp_path, models):
    policy = tmp_path / "policy"
    shutil.copytree(models["policy"], policy)
    recipe = lambda: _recipe(write_recipe, tmp_path, model_name_or_path=str(policy))  # noqa: E731
    run(recipe(), stop_after="iter_1/creator_samples")
    manifest = tmp_path / "out" / "iter_1" / "creator_samples" / "manifest.json"
    made = manifest.stat().st_mtime_ns
    run(recipe(), stop_after="iter_1/creator_samples")  # unchanged: skipped
    assert manifest.stat().st_mtime_ns == made
    other = make_tiny_policy(tmp_path / "other", seed=7)
    shutil.copy(other / "model.safetensors", policy / "model.safetensors")
    with pytest.raises(StaleArtifactError, match=r"iter_1/creator_samples .*changed: policy"):
        run(recipe(), stop_after="iter_1/creator_samples")
