"""Held-out evaluation (``iter_<t>/eval``): π_0 and every trained π_t on prompts never trained on."""

import json
import math
import statistics
from pathlib import Path

import pytest
from datasets import load_from_disk

from eva_plugin import cli
from eva_plugin.dpo import run_recipe as run
from eva_plugin.eval_stage import reward_summary as summary
from eva_plugin.recipe import load_recipe
from eva_plugin.stats import paired_difference

FIELDS = {"mean_reward", "stderr", "win_rate", "prompts"}


def manifest(out: Path, t: int, stage: str) -> dict:
    return json.loads((out / f"iter_{t}" / stage / "manifest.json").read_text())


def data(out: Path, t: int, stage: str):
    return load_from_disk(str(out / f"iter_{t}" / stage / "data"))


def trained_ids(out: Path, iterations: int) -> set[str]:
    ids = set(data(out, 0, "seed_pool")["prompt_id"])
    for t in range(1, iterations + 1):
        ids |= set(data(out, t, "prompts")["prompt_id"])
    return ids


def test_eval_prompts_file_is_evaluated_every_round_and_never_trained_on(write_recipe, tmp_path, prompts_file):
    shared = json.loads(prompts_file.read_text().splitlines()[0])["prompt"]  # also a seed prompt
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                             [shared, "describe a quiet morning", "name three rivers", "explain rain"]))
    path = write_recipe(eva={"eval_prompts": str(evals), "eval_samples": 2, "num_evolutions": 1})
    recipe = load_recipe(["--config", str(path)])
    run(recipe)
    out = recipe.output_dir
    held = set(data(out, 0, "eval_prompts")["prompt_id"])
    assert len(held) == 4
    assert not held & trained_ids(out, 2)
    assert manifest(out, 0, "seed_pool")["held_out"] == 1  # the shared prompt left the seed pool
    for t in (0, 1, 2):
        m = manifest(out, t, "eval")
        assert set(m) >= FIELDS and m["prompts"] == 4
        assert math.isfinite(m["mean_reward"]) and m["stderr"] >= 0
        assert 0 <= m["win_rate"] <= 1
        rows = data(out, t, "eval")
        assert set(rows["prompt_id"]) == held and all(len(r) == 2 for r in rows["rewards"])
    assert manifest(out, 0, "eval")["win_rate"] == 0.5
    # iteration t is answered by the policy trained in round t: different checkpoints, different fingerprints
    assert len({manifest(out, t, "eval")["fingerprint"] for t in (0, 1, 2)}) == 3

    seconds = {t: manifest(out, t, "eval")["seconds"] for t in (0, 1, 2)}
    run(load_recipe(["--config", str(path)]))  # resume: every eval is skipped
    assert {t: manifest(out, t, "eval")["seconds"] for t in (0, 1, 2)} == seconds


def test_test_split_size_holds_a_share_of_the_seed_pool_out(write_recipe, prompts_file):
    path = write_recipe(creator="none", eva={"iterations": 1, "eval_size": 2},
                        dataset_mixture={"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}],
                                         "seed": 0, "test_split_size": 3})
    recipe = load_recipe(["--config", str(path)])
    assert recipe.test_split_size == 3
    run(recipe)
    out = recipe.output_dir
    held = set(data(out, 0, "eval_prompts")["prompt_id"])
    n_seed = len(prompts_file.read_text().splitlines())
    assert len(held) == 3 and manifest(out, 0, "seed_pool")["pool_size"] == n_seed - 3
    assert not held & trained_ids(out, 1)
    assert manifest(out, 0, "eval")["win_rate"] == 0.5 and manifest(out, 0, "eval")["prompts"] == 2
    assert manifest(out, 1, "eval")["prompts"] == 2 and set(manifest(out, 1, "eval")) >= FIELDS


def test_eval_off_keeps_the_seed_pool_fingerprint(write_recipe):
    from eva_plugin.context import Iteration, Run
    from eva_plugin.prompt_sets import SeedPool, eval_on

    recipe = load_recipe(["--config", str(write_recipe())])
    facts = Run(recipe, runtime=None)
    assert not eval_on(facts)
    it = Iteration.__new__(Iteration)
    it.run, it.t = facts, 0
    assert set(SeedPool().config(it)) == {"datasets", "column", "seed", "mixture_seed", "contents"}


def test_summary_win_rate_counts_ties_half_and_skips_nan():
    ids = ["a", "b", "c", "d"]
    s = summary(ids, [1.0, 2.0, 0.0, math.nan], {"a": 0.0, "b": 2.0, "c": 1.0, "d": 0.0})
    assert s["win_rate"] == pytest.approx(0.5)  # win, tie, loss; d has no finite reward
    assert s["mean_reward"] == pytest.approx(1.0) and s["stderr"] == pytest.approx(1.0 / math.sqrt(3))
    assert summary(ids, [1.0] * 4, None)["win_rate"] == 0.5


def test_paired_difference_is_over_shared_finite_prompts():
    a = {"p": 1.0, "q": 0.5, "r": 0.2, "s": math.nan, "only_a": 9.0}
    b = {"p": 0.5, "q": 0.5, "r": 0.4, "s": 0.1}
    d = paired_difference(a, b)
    diffs = [0.5, 0.0, -0.2]
    assert d["prompts"] == 3 and d["difference"] == pytest.approx(sum(diffs) / 3)
    assert d["stderr"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert d["win_rate"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert paired_difference({"p": math.nan}, b) == {"difference": None, "stderr": None, "win_rate": None,
                                                      "prompts": 0}


def test_compare_shows_the_paired_held_out_difference(write_recipe, tmp_path, prompts_file, capsys):
    mixture = {"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}], "seed": 0,
               "test_split_size": 4}
    eva_run = write_recipe("a.yaml", output_dir=str(tmp_path / "a"), dataset_mixture=mixture,
                           eva={"iterations": 1, "eval_samples": 2, "num_evolutions": 1})
    base = write_recipe("b.yaml", output_dir=str(tmp_path / "b"), dataset_mixture=mixture, creator="none",
                        eva={"iterations": 1, "eval_samples": 2})
    for path in (eva_run, base):
        run(load_recipe(["--config", str(path)]))
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("held-out reward, A − B"):].splitlines()
    for t in (0, 1):
        a = dict(zip(data(tmp_path / "a", t, "eval")["prompt_id"], data(tmp_path / "a", t, "eval")["mean_reward"]))
        b = dict(zip(data(tmp_path / "b", t, "eval")["prompt_id"], data(tmp_path / "b", t, "eval")["mean_reward"]))
        assert set(a) == set(b) and len(a) == 4  # the same held-out prompts in both runs
        want = paired_difference(a, b)
        row = next(line.split() for line in table if line.split()[:1] == [str(t)])
        assert row[3] == f"{want['difference']:+.3f}" and row[4] == f"{want['stderr']:.3f}"
        assert row[5] == f"{want['win_rate']:.3f}" and row[6] == "4"
    # iteration 0 is the same initial policy, sampled with the same seed: no difference at all
    assert next(line.split() for line in table if line.split()[:1] == ["0"])[3] == "+0.000"


def test_eval_temperature_zero_answers_greedily(write_recipe, prompts_file):
    mixture = {"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}], "seed": 0,
               "test_split_size": 3}
    path = write_recipe(creator="none", dataset_mixture=mixture,
                        eva={"iterations": 1, "eval_samples": 2, "eval_temperature": 0.0})
    recipe = load_recipe(["--config", str(path)])
    run(recipe)
    for t in (0, 1):
        rows = data(recipe.output_dir, t, "eval")
        assert all(len(set(r)) == 1 for r in rows["responses"])  # greedy: both answers the same text
        config = json.loads((recipe.output_dir / f"iter_{t}" / "eval" / "manifest.json").read_text())["config"]
        assert config["temperature"] == 0.0
    sampled = write_recipe("sampled.yaml", creator="none", dataset_mixture=mixture,
                           eva={"iterations": 1, "eval_samples": 2}, output_dir=str(recipe.output_dir) + "-sampled")
    sampled = load_recipe(["--config", str(sampled)])
    run(sampled)
    assert any(len(set(r)) == 2 for r in data(sampled.output_dir, 0, "eval")["responses"])  # T 0.7: they differ


def test_stop_after_names_every_stage_the_run_has_and_only_those(write_recipe, prompts_file):
    """``--stop_after`` takes its names from stage_list: ``iter_1/eval`` exists when the run evaluates
    (and stops the run right there), not when it does not."""
    from eva_plugin.dpo import check_stop_after
    from eva_plugin.errors import RecipeError, StopAfterStage
    from eva_plugin.loop import EvaLoop

    plain = load_recipe(["--config", str(write_recipe("plain.yaml", eva={"iterations": 1}))])
    with pytest.raises(RecipeError, match="'iter_1/eval' is not a stage of this run"):
        check_stop_after(plain, "iter_1/eval")
    path = write_recipe("eval.yaml", creator="none", eva={"iterations": 1, "eval_size": 2},
                        dataset_mixture={"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}],
                                         "seed": 0, "test_split_size": 3})
    evaluated = load_recipe(["--config", str(path)])
    for name in ("iter_1/eval", "eval", "iter_0/eval", "iter_0/seed_pool", "iter_0/eval_prompts"):
        check_stop_after(evaluated, name)
    with pytest.raises(StopAfterStage, match="iter_1/eval"):
        EvaLoop(evaluated, stop_after="iter_1/eval").run()
    assert (evaluated.output_dir / "iter_1" / "eval" / "manifest.json").exists()
