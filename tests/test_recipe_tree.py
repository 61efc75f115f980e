"""Every recipe in ``recipes/`` parses; each model recipe runs one short round with tiny models swapped in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eva_plugin.recipe import effective_batch_line, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("config_*.yaml"))
MODEL_RECIPES = [p for p in RECIPES if "demo" not in p.parts]
PAPER = {  # SPEC §3 (EVA Table 6) and §5 (RLHF Workflow); epochs and global batch as the authors' scripts ran
    "gemma-2-9b-it/dpo": ("dpo", 5e-7, "cosine", 2, {"beta": 0.05}, "adamw_torch", 64),
    "gemma-2-9b-it/simpo": ("simpo", 8e-7, "cosine", 1, {"beta": 10.0, "gamma": 5.0}, "adamw_torch", 256),
    "gemma-2-9b-it/orpo": ("orpo", 5e-7, "cosine", 1, {"lambda": 0.5}, "adamw_torch", 64),
    "gemma-2-9b-it/sppo": ("sppo", 5e-7, "linear", 9, {"beta": 0.001}, "rmsprop", 64),
    "gemma-2-9b-it/rpo": ("dpo", 5e-7, "cosine", 1, {"beta": 0.1, "nll_alpha": 1.0, "nll_length_power": 2.0},
                          "adamw_torch", 64),
    "llama-3-8b-it/dpo": ("dpo", 5e-7, "cosine", 2, {"beta": 0.1}, "adamw_torch", 128),
}
#: processes of the accelerate config the recipes name (the authors' scripts: 8 GPUs)
PROCESSES = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / "zero3.yaml").read_text())["num_processes"]


def test_the_tree_has_the_papers_recipes():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for loss in ("dpo", "simpo", "orpo", "sppo", "rpo"):
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
        assert recipe.loss_knobs() == {**extra, **knobs}
        assert t.optim.value == optim
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps * PROCESSES == batch
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
    # one plain round, then EVA on the split it trained on (the multi-iteration rpo rows: on the next unused
    # split, every seed prompt used once), with the seed prompts as the buffer
    multi = "rpo" in path.parts
    assert (eva.warmup_iterations, eva.creator_input, eva.buffer) == (1, "fresh" if multi else "previous", "seed")
    assert eva.iterations == (3 if multi else 2)
    # the paper's evolver: GPT-4-0125 behind the OpenAI-compatible backend, at the authors' settings
    gen = eva.evolver_generation
    assert eva.evolver_model == "gpt-4-0125-preview" and gen.backend == "openai"
    sppo = "sppo" in path.parts  # the authors' SPPO scripts: evolver T 1.0 / 512 tokens, sampling T 0.9
    assert (gen.temperature, gen.max_new_tokens) == ((1.0, 512) if sppo else (0.88, 666))
    assert eva.generation.temperature == (0.9 if sppo else 0.7)
    assert gen.options["base_url"] and gen.options["api_key_env"] == "OPENAI_API_KEY"


#: Keys swapped for local stand-ins: tiny models, the transformers backend (no vLLM engine, no
#: server) and small sizes; everything else (loss, knobs, protocol) is the recipe's own.
def _tiny_overrides(path: Path, tmp_path: Path, models: dict, prompts_file: Path) -> list[str]:
    eva = load_recipe(["--config", str(path)]).eva
    judges = ["--eva.reward_model", str(models["pairrm" if eva.reward_type == "pairrm" else "reward"])]
    if eva.creator_reward_model is not None:
        judges += ["--eva.creator_reward_model", str(models["reward"]), "--eva.creator_reward_options", "{}"]
    return [
        "--config", str(path), "--model_name_or_path", str(models["policy"]), "--dtype", "float32",
        "--output_dir", str(tmp_path / "out"), "--max_length", "256", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--gradient_checkpointing", "false",
        "--eva.reward_options", "{}", "--eva.prompts", str(prompts_file),
        "--eva.iterations", str(eva.warmup_iterations + 1),  # the recipe's warm-up rounds plus one more
        "--eva.prompts_per_iteration", "6", "--eva.num_samples", "2", "--eva.solver_samples", "2",
        "--eva.num_evolutions", "1", "--eva.evolver_drop_truncated", "false",
        "--eva.generation", "{backend: transformers, max_new_tokens: 8, batch_size: 8}",
        "--eva.evolver_model", "null",  # the tiny policy evolves in place of the external LLM
        "--eva.evolver_generation", "{backend: transformers, max_new_tokens: 8}",
        *judges,
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


@pytest.mark.parametrize("path", [p for p in MODEL_RECIPES if "gemma-2-9b-it" in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_the_header_states_the_effective_batch_the_recipe_trains_with(path):
    """Per device × accumulation × the accelerate config's processes, as the header says it."""
    t = load_recipe(["--config", str(path)]).training
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * PROCESSES
    header = path.read_text().split("\n\n")[0]
    stated = f"= {t.per_device_train_batch_size} x {t.gradient_accumulation_steps} x {PROCESSES} = {batch} sequences"
    assert stated in header


def test_the_effective_batch_is_logged_once_with_the_launchs_processes(monkeypatch, caplog):
    """The log names per device × accumulation × processes; a user on 16 GPUs sees that the authors' 64
    became 128 (the processes are the launch's WORLD_SIZE)."""
    path = ROOT / "recipes" / "gemma-2-9b-it" / "dpo" / "config_eva.yaml"
    with caplog.at_level("INFO", logger="eva_plugin"):
        recipe = load_recipe(["--config", str(path)])
    lines = [r.getMessage() for r in caplog.records if "effective batch" in r.getMessage()]
    assert lines == ["recipe: effective batch 8 = 1 per device × 8 accumulation × 1 process"]
    line = effective_batch_line(recipe.training, 8)
    assert line == "effective batch 64 = 1 per device × 8 accumulation × 8 processes"
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert effective_batch_line(recipe.training).startswith("effective batch 128 = ")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "3")  # another process of the launch: said once, by rank 0
    caplog.clear()
    with caplog.at_level("INFO", logger="eva_plugin"):
        load_recipe(["--config", str(path)])
    assert not [r for r in caplog.records if "effective batch" in r.getMessage()]


def test_the_multi_iteration_recipe_uses_every_seed_prompt_once():
    """EVA Tables 25-27 ("all seed prompts are used"): every round of the rpo EVA recipe draws its own 20 K
    split, so the three rounds cover 60 K of UltraFeedback's 61,135 train_prefs prompts; a single-EVA-round
    recipe scores the split its warm-up round trained on."""
    from eva_plugin.config import split_rounds

    rpo = load_recipe(["--config", str(ROOT / "recipes" / "gemma-2-9b-it" / "rpo" / "config_eva.yaml")])
    assert split_rounds(rpo.creator, rpo.eva) == [1, 2, 3]
    assert rpo.eva.prompts_per_iteration * len(split_rounds(rpo.creator, rpo.eva)) == 60_000
    dpo = load_recipe(["--config", str(ROOT / "recipes" / "gemma-2-9b-it" / "dpo" / "config_eva.yaml")])
    assert split_rounds(dpo.creator, dpo.eva) == [1]


def _readme_paper_rows() -> list[dict[str, str]]:
    section = (ROOT / "README.md").read_text().split("## The paper's runs", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in row.strip("|").split("|")))) for row in table[2:]]


REWARD_NAMES = {"ArmoRM": "RLHFlow/ArmoRM-Llama3-8B-v0.1", "PairRM-0.4B": "llm-blender/PairRM-hf"}


def test_the_readme_paper_table_matches_the_recipes():
    """The effective batch and the creator / solver reward models of each row are the recipe's."""
    rows = _readme_paper_rows()
    checked = 0
    for row in rows:
        name = row["recipe (`recipes/gemma-2-9b-it/…`)"].split("`")[1]
        if "<loss>" in name:
            continue
        path = ROOT / "recipes" / "gemma-2-9b-it" / name
        recipe = load_recipe(["--config", str(path)])
        t = recipe.training
        assert int(row["effective batch"]) == t.per_device_train_batch_size * t.gradient_accumulation_steps * PROCESSES
        creator, solver = (x.strip() for x in row["reward (creator / solver)"].split("/", 1))
        if "8B judge" in row["recipe (`recipes/gemma-2-9b-it/…`)"]:  # the variant the recipe's comment names
            assert "reward_model: RLHFlow/pair-preference-model-LLaMA3-8B, reward_type: pairwise" in path.read_text()
            continue
        assert recipe.eva.rewarder("creator").model == REWARD_NAMES[creator]
        assert recipe.eva.rewarder("solver").model == REWARD_NAMES[solver]
        checked += 1
    assert checked == 5
