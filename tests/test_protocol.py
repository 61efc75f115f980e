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


SUBJECTS = ["rivers", "stars", "bread", "chess", "tides"]


def _three_sets(folder: Path, sizes=(4, 4, 4)) -> list[Path]:
    """Three prompt files in the RLHF Workflow's manner (one set per iteration), distinct prompts each;
    the first is a JSON array, the others JSONL."""
    paths = []
    for k, (name, size) in enumerate(zip("abc", sizes)):
        rows = [{"prompt": f"set {name}: question {i} about {SUBJECTS[(i + k) % len(SUBJECTS)]}"} for i in range(size)]
        if k == 0:
            path = folder / f"iter{k + 1}.json"
            path.write_text(json.dumps(rows))
        else:
            path = folder / f"iter{k + 1}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


def _mixture(paths: list[Path]) -> dict:
    return {"datasets": [{"id": str(p), "split": "train", "weight": 1.0} for p in paths], "seed": 0}


def _texts(path: Path) -> set[str]:
    text = path.read_text()
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    return {r["prompt"] for r in rows}


def test_ordered_splits_give_round_t_the_t_th_dataset(write_recipe, tmp_path, caplog):
    """RLHF Workflow: iteration t trains on prompt set t (iter1/2/3-20K), not a draw from all three; a set
    smaller than prompts_per_iteration is used whole, and said once."""
    paths = _three_sets(tmp_path, sizes=(5, 5, 2))
    path = write_recipe(creator="none", dataset_mixture=_mixture(paths),
                        eva={"iterations": 3, "prompts_per_iteration": 4, "splits": "ordered"})
    recipe = load_recipe(["--config", str(path)])
    with caplog.at_level(logging.WARNING, logger="eva_plugin"):
        run(recipe, stop_after="iter_3/prompts")
    out = recipe.output_dir
    for t, (source, size) in enumerate(zip(paths, (4, 4, 2)), start=1):
        split = data(out, t, "prompts")
        assert len(split) == size and set(split["prompt"]) <= _texts(source), t
        assert set(split["source"]) == {str(source)} and set(split["dataset"]) == {t - 1}
        assert manifest(out, t, "prompts")["dataset"] == f"{source} (train)"
        assert manifest(out, t, "prompts")["seed_split"] == t - 1
    table = manifest(out, 0, "seed_pool")["seed_splits"]
    assert [(r["round"], r["dataset"], r["prompts"], r["taken"]) for r in table] == [
        (1, f"{paths[0]} (train)", 5, 4), (2, f"{paths[1]} (train)", 5, 4), (3, f"{paths[2]} (train)", 2, 2)]
    # within a set the prompts are shuffled with the run seed: the first split is not the file's first rows
    pool = data(out, 0, "seed_pool")
    first = [r["prompt"] for r in pool if r["dataset"] == 0]
    assert sorted(first) == sorted(_texts(paths[0])) and first != [f"set a: question {i} about {SUBJECTS[i]}"
                                                                    for i in range(5)]
    short = [r.getMessage() for r in caplog.records if "fewer than prompts_per_iteration" in r.getMessage()]
    assert len(short) == 1 and short[0].startswith(f"eva.splits: ordered: round 3's dataset {paths[2]} (train) "
                                                   "has 2 seed prompts, fewer than prompts_per_iteration 4")


def test_ordered_splits_feed_the_creator_with_fresh_input(write_recipe, tmp_path):
    """creator_input: fresh with ordered splits: round t's creator scores dataset t, its buffer comes from it."""
    paths = _three_sets(tmp_path)
    path = write_recipe(dataset_mixture=_mixture(paths),
                        eva={"creator_input": "fresh", "splits": "ordered", "prompts_per_iteration": 3})
    recipe = load_recipe(["--config", str(path)])
    assert any("never trained on" in n and str(paths[2]) in n for n in recipe.notes)  # two rounds, three sets
    run(recipe, stop_after="iter_2/prompts")
    out = recipe.output_dir
    for t in (1, 2):
        scored = data(out, t, "creator_samples")
        assert len(scored) == 3 and set(scored["prompt"]) <= _texts(paths[t - 1])
        assert manifest(out, t, "creator_samples")["dataset"] == f"{paths[t - 1]} (train)"
    buffer = data(out, 2, "prompts").filter(lambda r: r["origin"] == "buffer")
    assert len(buffer) and set(buffer["prompt"]) <= _texts(paths[1])


def test_shuffled_splits_draw_each_round_from_every_dataset(write_recipe, tmp_path):
    """The default: the datasets are pooled and shuffled, so a round's split mixes them."""
    paths = _three_sets(tmp_path)
    path = write_recipe(creator="none", dataset_mixture=_mixture(paths),
                        eva={"iterations": 3, "prompts_per_iteration": 4})
    recipe = load_recipe(["--config", str(path)])
    assert recipe.eva.splits == "shuffled"
    run(recipe, stop_after="iter_3/prompts")
    out = recipe.output_dir
    splits = [data(out, t, "prompts") for t in (1, 2, 3)]
    assert any(len(set(s["source"])) > 1 for s in splits)
    assert "dataset" not in data(out, 0, "seed_pool").column_names
    assert "seed_splits" not in manifest(out, 0, "seed_pool") and "dataset" not in manifest(out, 1, "prompts")


def test_changing_splits_makes_the_seed_pool_stale(write_recipe, tmp_path):
    from eva_plugin.errors import StaleArtifactError

    paths = _three_sets(tmp_path)

    def recipe(**eva):
        return load_recipe(["--config", str(write_recipe(creator="none", dataset_mixture=_mixture(paths),
                                                         eva={"iterations": 3, **eva}))])

    run(recipe(), stop_after="iter_0/seed_pool")
    with pytest.raises(StaleArtifactError, match=r"iter_0/seed_pool was made with a different config \(changed: "
                                                 r"splits"):
        run(recipe(splits="ordered"), stop_after="iter_0/seed_pool")
