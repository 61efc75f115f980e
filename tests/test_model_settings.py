"""The recipe's model settings (``ModelConfig``) reach every model load; ``push_to_hub`` is honoured
(or, offline, turned off with one warning).

Loads are recorded by a spy around the real ``AutoModelForCausalLM.from_pretrained`` (the
models still load, from the tiny local checkpoints); the hub upload is a local stand-in
for ``huggingface_hub.HfApi`` (no hub can be reached here).
"""

from __future__ import annotations

import logging

import pytest
from transformers import AutoModelForCausalLM

from eva_plugin import dpo
from eva_plugin.modeling import load_causal_lm, model_kwargs
from eva_plugin.recipe import load_recipe
from eva_plugin.solver.training import _reference


@pytest.fixture
def loads(monkeypatch):
    """Every causal-LM load: (path, keywords, the loaded model's attention implementation). The read-back
    of a saved policy onto the meta device (``training.saved_weights_fault``: file headers, no model that
    runs) is no load of a model to use, and not recorded."""
    seen: list[tuple[str, dict, str]] = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(path, *args, **kwargs):
        if kwargs.get("device_map") == "meta":
            return original(path, *args, **kwargs)
        model = original(path, *args, **kwargs)
        seen.append((str(path), kwargs, model.config._attn_implementation))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return seen


def eager_recipe(write_recipe, models, **top):
    path = write_recipe(attn_implementation="eager", model_revision="main",
                        eva={"iterations": 1, "evolver_model": str(models["policy"]), "rewriter": True}, **top)
    return path


def test_every_load_of_an_eva_round_gets_the_recipe_settings(write_recipe, models, loads):
    recipe = load_recipe(["--config", str(eager_recipe(write_recipe, models))])
    dpo.run_recipe(recipe)
    # the policy sampler, the evolver (its own load: eva.evolver_model) and the trained policy
    assert len(loads) >= 3
    for path, kwargs, attn in loads:
        assert path == str(models["policy"])
        assert kwargs["attn_implementation"] == "eager" and kwargs["revision"] == "main"
        assert attn == "eager"
    assert (recipe.output_dir / "iter_1" / "policy" / "model.safetensors").exists()


def test_a_reference_loaded_from_its_own_path_gets_them(write_recipe, models, loads, tmp_path):
    recipe = load_recipe(["--config", str(eager_recipe(write_recipe, models))])
    policy = load_causal_lm(str(models["policy"]), **model_kwargs(recipe.model, str(models["policy"])))
    ref = _reference(policy, str(tmp_path / "iter_1" / "policy"), str(models["policy"]), None, False, recipe.model)
    assert ref is not policy and ref.config._attn_implementation == "eager"
    assert loads[-1][1]["attn_implementation"] == "eager" and loads[-1][1]["revision"] == "main"
    # the same checkpoint as the policy: a copy of the eager model, not a second load
    same = _reference(policy, str(models["policy"]), str(models["policy"]), None, False, recipe.model)
    assert same.config._attn_implementation == "eager" and len(loads) == 2


def test_model_kwargs_revision_and_quantization(write_recipe, models, tmp_path):
    recipe = load_recipe(["--config", str(write_recipe(model_revision="abc123", load_in_4bit=True))])
    own = model_kwargs(recipe.model, str(models["policy"]))
    assert own["revision"] == "abc123" and own["quantization_config"].load_in_4bit
    assert "device_map" not in own  # no GPU here: nothing to pin the quantized model to
    assert model_kwargs(recipe.model, "someone/other-evolver").get("revision") is None  # another hub model
    assert model_kwargs(recipe.model, str(tmp_path)).get("revision") == "abc123"  # a local folder ignores it


def test_plain_dpo_init_kwargs_come_from_the_same_helper(write_recipe, models, monkeypatch):
    recipe = load_recipe(["--config", str(write_recipe(attn_implementation="eager", model_revision="main"))])
    recipe.creator = None
    captured = {}

    class StopHere(Exception):
        pass

    def fake_trainer(*, args, **_):
        captured.update(args.model_init_kwargs)
        raise StopHere

    monkeypatch.setattr("trl.DPOTrainer", fake_trainer)
    monkeypatch.setattr("eva_plugin.data.load_preferences", lambda *a, **k: None)
    with pytest.raises(StopHere):
        dpo.plain_dpo(recipe)
    assert captured["attn_implementation"] == "eager" and captured["revision"] == "main"
    assert captured["trust_remote_code"] is False


def test_flash_attention_without_flash_attn_becomes_sdpa(write_recipe, caplog):
    with caplog.at_level(logging.WARNING, logger="eva_plugin"):
        recipe = load_recipe(["--config", str(write_recipe(attn_implementation="flash_attention_2"))])
    assert recipe.model.attn_implementation == "sdpa"
    notes = [n for n in recipe.notes if "attn_implementation" in n]
    assert notes == ["`attn_implementation: flash_attention_2` switched to `sdpa`: no GPU on this machine"]
    assert sum("flash_attention_2" in r.getMessage() for r in caplog.records) == 1
    cli = load_recipe(["--config", str(write_recipe()), "--attn_implementation", "flash_attention_3"])
    assert cli.model.attn_implementation == "sdpa"


def test_push_to_hub_offline_is_turned_off_with_one_warning(write_recipe, caplog):
    with caplog.at_level(logging.WARNING, logger="eva_plugin"):
        recipe = load_recipe(["--config", str(write_recipe(push_to_hub=True))])
    assert recipe.training.push_to_hub is False
    assert sum("push_to_hub" in r.getMessage() and "HF_HUB_OFFLINE" in r.getMessage() for r in caplog.records) == 1


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, uploads nothing."""

    calls: list[tuple] = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, folder_path, revision, files))


def test_push_to_hub_uploads_the_final_policy(write_recipe, models, monkeypatch, capsys):
    path = write_recipe(push_to_hub=True, hub_model_id="me/tiny-eva", eva={"iterations": 1})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    recipe = load_recipe(["--config", str(path)])  # online: kept
    assert recipe.training.push_to_hub is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the run itself stays offline; the hub is the stand-in
    FakeHub.calls = []
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub)
    dpo.run_recipe(recipe)
    uploads = [c for c in FakeHub.calls if c[0] == "upload_folder"]
    assert len(uploads) == 1
    _, repo_id, folder, revision, files = uploads[0]
    assert repo_id == "me/tiny-eva" and folder == str(recipe.output_dir / "iter_1" / "policy")
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert ("create_repo", "me/tiny-eva", None, True) in FakeHub.calls
    assert "pushed the final policy to https://huggingface.co/me/tiny-eva" in capsys.readouterr().out


def test_no_push_when_not_asked(write_recipe, monkeypatch):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1}))])
    FakeHub.calls = []
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub)
    dpo.run_recipe(recipe, stop_after="prompts")
    assert FakeHub.calls == []


def test_reward_options_set_the_reward_model_load(models):
    from eva_plugin import plugins

    reward = plugins.get("reward_models", "sequence_classification")(
        str(models["reward"]), attn_implementation="eager", revision="main", device="cpu")
    assert reward.model.config._attn_implementation == "eager"
