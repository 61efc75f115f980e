"""Every recipe in ``recipes/`` parses; each model recipe runs one short round with tiny models swapped in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eva_plugin.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("config_*.yaml"))
MODEL_RECIPES = [p for p in RECIPES if "demo" not in p.parts]
PAPER = {  # SPEC §3 (EVA Table 6) and §5 (RLHF Workflow)
    "gemma-2-9b-it/dpo": ("dpo", 5e-7, "cosine", 2, {"beta": 0.05}, "adamw_torch", 8),
    "gemma-2-9b-it/simpo": ("simpo", 8e-7, "cosine", 1, {"beta": 10.0, "gamma": 5.0}, "adamw_torch", 32),
    "gemma-2-9b-it/orpo": ("orpo", 5e-7, "cosine", 1, {"lambda": 0.5}, "adamw_torch", 8),
    "gemma-2-9b-it/sppo": ("sppo", 5e-7, "linear", 6, {"beta": 0.001}, "rmsprop", 8),
    "llama-3-8b-it/dpo": ("dpo", 5e-7, "cosine", 2, {"beta": 0.1}, "adamw_torch", 128),
}


def test_the_tree_has_the_papers_recipes():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for loss in ("dpo", "simpo", "orpo", "sppo"):
        assert {f"gemma-2-9b-it/{loss}/config_eva.yaml", f"gemma-2-9b-it/{loss}/config_iterative.yaml"} <= names
    assert "llama-3-8b-it/dpo/config_online_rlhf.yaml" in names
    for name in ("ddp", "zero3", "fsdp"):
        assert (ROOT / "recipes" / "accelerate_configs" / f"{name}.yaml").exists()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_recipe_parses(path):
    recipe = load_recipe(["--config", str(path)])
    assert recipe.creator in ("eva", "none")
    key = "/".join(path.relative_to(ROOT / "recipes").parts[:2])
    if key in PAPER:
        loss, lr, sched, epochs, knobs, optim, batch = PAPER[key]
        t = recipe.training
        assert (recipe.eva.loss, t.learning_rate, t.lr_scheduler_type.value, t.num_train_epochs) == (
            loss, lr, sched, epochs)
        extra = {"label_smoothing": 0.0} if loss == "dpo" else {}
        extra.update({} if loss == "orpo" else {"nll_alpha": 0.0})
        assert recipe.loss_knobs() == {**knobs, **extra}
        assert t.optim.value == optim and t.per_device_train_batch_size * t.gradient_accumulation_steps * 8 == batch
        assert t.warmup_steps == (0.03 if key.startswith("llama") else 0.1)
        assert recipe.eva.solver_samples == (8 if key.startswith("llama") else 6)
    if path.name == "config_online_rlhf.yaml":  # RLHF Workflow: iteration t on prompt set t (iter{1,2,3}-20K)
        assert recipe.eva.splits == "ordered" and recipe.eva.iterations == len(recipe.datasets) == 3
        assert [s.path for s in recipe.datasets] == [f"RLHFlow/iterative-prompt-v1-iter{t}-20K" for t in (1, 2, 3)]


@pytest.mark.parametrize("path", [p for p in MODEL_RECIPES if "gemma-2-9b-it" in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_gemma_recipes_sample_with_vllm_and_eva_recipes_run_the_papers_protocol(path):
    eva = load_recipe(["--config", str(path)]).eva
    assert eva.generation.backend == "vllm"
    if path.name != "config_eva.yaml":
        return
    # one plain round, then EVA on the split it trained on, with the seed prompts as the buffer
    assert (eva.warmup_iterations, eva.creator_input, eva.buffer) == (1, "previous", "seed")
    assert eva.iterations > eva.warmup_iterations
    # the paper's evolver: GPT-4-0125 behind the OpenAI-compatible backend, at the authors' settings
    gen = eva.evolver_generation
    assert eva.evolver_model == "gpt-4-0125-preview" and gen.backend == "openai"
    assert (gen.temperature, gen.max_new_tokens) == (0.88, 666)
    assert gen.options["base_url"] and gen.options["api_key_env"] == "OPENAI_API_KEY"


#: Keys swapped for local stand-ins: tiny models, the transformers backend (no vLLM engine, no
#: server) and small sizes; everything else (loss, knobs, protocol) is the recipe's own.
def _tiny_overrides(path: Path, tmp_path: Path, models: dict, prompts_file: Path) -> list[str]:
    warmup = load_recipe(["--config", str(path)]).eva.warmup_iterations
    return [
        "--config", str(path), "--model_name_or_path", str(models["policy"]), "--dtype", "float32",
        "--output_dir", str(tmp_path / "out"), "--max_length", "256", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--gradient_checkpointing", "false", "--eva.reward_model", str(models["reward"]),
        "--eva.reward_options", "{}", "--eva.prompts", str(prompts_file),
        "--eva.iterations", str(warmup + 1),  # the recipe's warm-up rounds plus one more
        "--eva.prompts_per_iteration", "6", "--eva.num_samples", "2", "--eva.solver_samples", "2",
        "--eva.num_evolutions", "1", "--eva.evolver_drop_truncated", "false",
        "--eva.generation", "{backend: transformers, max_new_tokens: 8, batch_size: 8}",
        "--eva.evolver_model", "null",  # the tiny policy evolves in place of the external LLM
        "--eva.evolver_generation", "{backend: transformers, max_new_tokens: 8}",
    ]


@pytest.mark.parametrize("path", [p for p in MODEL_RECIPES if p.name != "config_iterative.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_each_model_recipe_runs_a_short_round_on_tiny_models(path, tmp_path, models, prompts_file):
    from eva_plugin.dpo import run_recipe as run

    recipe = load_recipe(_tiny_overrides(path, tmp_path, models, prompts_file))
    assert recipe.eva.generation.backend == recipe.eva.evolver_generation.backend == "transformers"
    assert recipe.eva.evolver_model is None
    run(recipe)
    last = recipe.eva.iterations
    for t in range(1, last + 1):
        manifest = json.loads((tmp_path / "out" / f"iter_{t}" / "policy" / "manifest.json").read_text())
        assert manifest["loss"] == recipe.eva.loss and manifest["steps"] >= 1
    assert (tmp_path / "out" / f"iter_{last}" / "policy" / "model.safetensors").exists()
    if recipe.creator == "eva":  # the creator ran after the warm-up round(s), not during them
        assert (tmp_path / "out" / f"iter_{last}" / "evolved" / "manifest.json").exists()
        assert not (tmp_path / "out" / "iter_1" / "evolved").exists()
