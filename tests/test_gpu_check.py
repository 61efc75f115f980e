"""benchmarks/gpu_check.py (`make gpu-check`) on CPU: its pieces in-process with tiny shapes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eva_plugin.dpo import run_recipe as run
from eva_plugin.recipe import load_recipe

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finished_run(gc, tmp_path_factory):
    """A finished tiny 2-iteration run of the recipe the script writes, on models it builds."""
    work = tmp_path_factory.mktemp("gpu-check")
    tokenizer, source = gc.load_tokenizer(tiny=True)
    models = gc.build_models(work / "models", tokenizer, dict(gc.TINY_SHAPE), dtype="float32")
    prompts = gc.write_prompts(work / "prompts.jsonl", gc.PROFILES["cpu"]["prompts"])
    recipe = gc.write_recipe(work / "recipe.yaml", models, prompts, work / "out", gc.PROFILES["cpu"])
    run(load_recipe(["--config", str(recipe)]))
    return {"work": work, "models": models, "prompts": prompts, "recipe": recipe, "out": work / "out",
            "source": source}


def test_models_have_the_asked_shape_and_dtype(gc, finished_run):
    from transformers import AutoConfig

    policy = AutoConfig.from_pretrained(finished_run["models"]["policy"])
    reward = AutoConfig.from_pretrained(finished_run["models"]["reward"])
    assert policy.architectures == ["LlamaForCausalLM"] and policy.num_hidden_layers == 2
    assert policy.tie_word_embeddings
    assert reward.architectures == ["LlamaForSequenceClassification"] and reward.num_labels == 1
    assert reward.pad_token_id is not None
    assert (finished_run["models"]["policy"] / "tokenizer.json").exists()
    assert finished_run["source"] == "tiny offline tokenizer"


def test_recipe_is_the_issues_eva_run(gc, tmp_path):
    models = {"policy": tmp_path / "p", "reward": tmp_path / "r"}
    recipe = json.loads(gc.write_recipe(tmp_path / "r.yaml", models, tmp_path / "x.jsonl", tmp_path / "o",
                                        gc.PROFILES["gpu"], backend="vllm").read_text())
    assert recipe["creator"] == "eva" and recipe["bf16"] and recipe["dtype"] == "bfloat16"
    eva = recipe["eva"]
    assert (eva["iterations"], eva["prompts_per_iteration"], eva["num_samples"]) == (2, 128, 6)
    assert eva["generation"]["max_new_tokens"] == 192 and eva["generation"]["backend"] == "vllm"
    lines = gc.write_prompts(tmp_path / "p.jsonl", 128).read_text().splitlines()
    assert len(lines) == 128 and len({json.loads(x)["prompt"] for x in lines}) == 128


def test_smollm2_shape_matches_the_embedded_checkpoint(gc):
    shape, _ = gc.smollm2_shape()
    assert {k: shape[k] for k in gc.SHAPE_KEYS} == {k: gc.SMOLLM2_SHAPE[k] for k in gc.SHAPE_KEYS}
    cfg = gc.embedded_config()
    if cfg is None:
        pytest.skip("the embedded SmolLM2 checkpoint is not converted in this cache")
    assert {k: cfg[k] for k in gc.SHAPE_KEYS} == {k: gc.SMOLLM2_SHAPE[k] for k in gc.SHAPE_KEYS}


def test_summary_from_a_finished_runs_manifests(gc, finished_run):
    rows = gc.stage_rows(finished_run["out"])
    stages = [(r["iteration"], r["stage"]) for r in rows]
    for t in (1, 2):
        for stage in ("creator_samples", "creator_rewards", "evolved", "solver_samples", "policy"):
            assert (t, stage) in stages
    samples = next(r for r in rows if r["stage"] == "creator_samples")
    assert samples["tokens"] > 0 and samples["tokens_per_second"] > 0 and samples["seconds"] > 0
    assert gc.evolved_ratio(rows) > 0
    results = {
        "device": "CPU", "total": 12.5, "notes": ["a note"],
        "tests": {"pytest -m gpu": (0, gc.pytest_counts("3 passed, 1 skipped, 200 deselected in 4.2s"), 4.2)},
        "runs": {"transformers backend": {"rc": 0, "wall": 10.0, "peak_mib": None, "rows": rows}},
        "benchmarks": {"sampling.py": (0, gc.ratios("a: 1.0 tokens/s\nseeded / native: 0.93x\n"), 3.0)},
    }
    text = gc.summary(results)
    assert "3 passed, 1 skipped, 200 deselected" in text
    assert "evolved / creator_samples seconds:" in text and "seeded / native: 0.93x" in text
    assert "total wall time: 12.5 s" in text and "creator_samples" in text


def test_optional_manifest_fields_are_printed(gc, tmp_path):
    folder = tmp_path / "iter_1" / "creator_samples"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"seconds": 2.0, "rows": 4, "tokens_generated": 100, "tokens_per_second": 55.0,
         "responses_per_second": 12.0, "max_memory_allocated": 3 * 2**30}))
    rows = gc.stage_rows(tmp_path)
    assert rows[0]["tokens_per_second"] == 55.0
    table = "\n".join(gc.run_table("x", rows))
    assert "max_memory_allocated" in table and "3.00 GiB" in table and "12.0" in table


def test_parsers(gc):
    assert gc.pytest_counts("== 2 failed, 5 passed, 1 error in 3s ==") == {"failed": 2, "passed": 5, "error": 1}
    assert gc.pytest_counts("no tests ran") == {}
    assert gc.ratios("only a line") == ["only a line"]


def test_without_cuda_the_gpu_mode_refuses(gc, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gc.main([]) == 2
    assert "--cpu" in capsys.readouterr().err
