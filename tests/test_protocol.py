"""The paper's protocol, read from the artifacts: a warm-up round before EVA, a buffer of seed
prompts, fresh seed splits for the creator, and a seed pool that is never silently reused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import load_from_disk

from eva_plugin.dpo import run_recipe as run
from eva_plugin.errors import RecipeError
from eva_plugin.recipe import load_recipe
from eva_plugin.stage_list import CREATOR, STAGES


def data(out: Path, t: int, stage: str):
    return load_from_disk(str(out / f"iter_{t}" / stage / "data"))


def manifest(out: Path, t: int, stage: str) -> dict:
    return json.loads((out / f"iter_{t}" / stage / "manifest.json").read_text())


def ids(ds) -> set[str]:
    return set(ds["prompt_id"])


def test_a_warm_up_round_comes_before_the_creator(write_recipe):
    """Iteration 1 is plain DPO on the first seed split; iteration 2's creator scores iteration 1's
    prompts with iteration 1's policy."""
    recipe = load_recipe(["--config", str(write_recipe(eva={"warmup_iterations": 1,
                                                            "prompts_per_iteration": 6}))])
    run(recipe, stop_after="iter_2/creator_samples")
    out = recipe.output_dir
    assert not any((out / "iter_1" / stage).exists() for stage in [s.name for s in STAGES if s.phase == CREATOR])
    first = data(out, 1, "prompts")
    assert set(first["origin"]) == {"seed"} and len(first) == 6
    assert ids(first) == ids(data(out, 0, "seed_pool").select(range(6)))  # the first seed split
    scored = data(out, 2, "creator_samples")
    assert list(scored["prompt_id"]) == list(first["prompt_id"])
    assert manifest(out, 2, "creator_samples")["config"]["policy"] == manifest(out, 1, "policy")["fingerprint"]


def test_creator_input_fresh_scores_a_new_seed_split_each_round(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"creator_input": "fresh",
                                                            "prompts_per_iteration": 5}))])
    run(recipe, stop_after="iter_2/prompts")
    out = recipe.output_dir
    pool = data(out, 0, "seed_pool")
    one, two = data(out, 1, "creator_samples"), data(out, 2, "creator_samples")
    assert ids(one) == ids(pool.select(range(5))) and ids(two) == ids(pool.select(range(5, 10)))
    buffer = data(out, 2, "prompts").filter(lambda r: r["origin"] == "buffer")
    assert len(buffer) and ids(buffer) <= ids(two)  # the buffer is the split the creator scored


def test_buffer_previous_draws_from_the_last_round(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"buffer": "previous"}))])
    run(recipe, stop_after="iter_2/prompts")
    out = recipe.output_dir
    buffer = data(out, 2, "prompts").filter(lambda r: r["origin"] == "buffer")
    assert len(buffer) and ids(buffer) <= ids(data(out, 1, "prompts"))


def test_a_shortfall_of_evolved_prompts_is_said_once_with_the_numbers(write_recipe, caplog):
    recipe = load_recipe(["--config", str(write_recipe(eva={"num_evolutions": 1, "evolved_fraction": 1.0}))])
    with caplog.at_level(logging.WARNING, logger="eva_plugin"):
        run(recipe, stop_after="iter_1/prompts")
    lines = [r.getMessage() for r in caplog.records if "evolved prompts survived" in r.getMessage()]
    kept = manifest(recipe.output_dir, 1, "evolved")["kept"]
    assert len(lines) == 1
    assert lines[0].startswith(f"iteration 1: {kept} evolved prompts survived, the mix wants 12")
    assert manifest(recipe.output_dir, 1, "prompts")["evolved_shortfall"] == 12 - kept


def test_running_out_of_seed_prompts_stops_before_any_model_loads(write_recipe, monkeypatch):
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    path = write_recipe(creator="none", eva={"iterations": 3, "prompts_per_iteration": 5})
    with pytest.raises(RecipeError, match=r"the 3 rounds need 3 seed split\(s\) of 5 prompts \(15\) but the "
                                          r"seed pool has 12; .*eva.reuse_pool: true"):
        run(load_recipe(["--config", str(path)]))


def test_creator_none_splits_the_pool_into_disjoint_rounds(write_recipe):
    """RLHF Workflow: each iteration trains on prompts of its own (60 K = 3 × 20 K)."""
    recipe = load_recipe(["--config", str(write_recipe(creator="none", eva={"iterations": 2}))])
    run(recipe, stop_after="iter_2/prompts")
    out = recipe.output_dir
    one, two = data(out, 1, "prompts"), data(out, 2, "prompts")
    assert len(one) == len(two) == 6 and not ids(one) & ids(two)


def test_reuse_pool_wraps_around_when_asked(write_recipe):
    path = write_recipe(creator="none", eva={"iterations": 2, "prompts_per_iteration": 8, "reuse_pool": True})
    recipe = load_recipe(["--config", str(path)])
    run(recipe, stop_after="iter_2/prompts")
    pool = list(data(recipe.output_dir, 0, "seed_pool")["prompt_id"])
    assert list(data(recipe.output_dir, 2, "prompts")["prompt_id"]) == [pool[(8 + i) % 12] for i in range(8)]


def test_a_prompt_too_long_for_the_policy_is_answered_empty_and_counted(write_recipe, tmp_path, prompts_file):
    """One 20 k-word prompt among ordinary ones: no crash, the sampling manifest counts it."""
    long_file = tmp_path / "long.jsonl"
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    rows.append({"prompt": "tell me " + "very " * 20000 + "long story"})
    long_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = load_recipe(["--config", str(write_recipe(eva={"prompts": str(long_file)}))])
    run(recipe, stop_after="iter_1/creator_samples")
    out = recipe.output_dir
    assert manifest(out, 1, "creator_samples")["prompts_too_long"] == 1
    sampled = data(out, 1, "creator_samples")
    too_long = [r for r in sampled if r["prompt"].startswith("tell me very")]
    assert len(sampled) == 13 and too_long[0]["responses"] == [""] * 4
