"""PairRM as a reward model, and a creator with a reward model of its own (SPPO's two judges)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from eva_plugin.errors import RecipeError
from eva_plugin.rewards.pairrm import PairRMReward, aggregate_scores

CONV = [[{"role": "user", "content": "write a short poem about the sea"}],
        [{"role": "user", "content": "why is the sky blue ?"}]]
RESPONSES = [["the sea is blue and deep", "waves", "a poem : sea sea sea", "<|candidate2|> sea"],
             ["because of scattering", "no idea"]]


@pytest.fixture(scope="module")
def pairrm(models):
    return models["pairrm"]


def test_aggregate_scores_are_llm_blenders():
    """s_i = (1/n) Σ_j (C[i, j] − C[j, i]) over all n columns, the zero diagonal included."""
    c = np.array([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0], [1.0, -1.0, 0.0]])
    expected = [sum(c[i, j] - c[j, i] for j in range(3)) / 3 for i in range(3)]
    assert aggregate_scores(c).tolist() == pytest.approx(expected)
    assert aggregate_scores(np.zeros((0, 0))).tolist() == []


def test_scores_equal_the_comparisons_one_forward_each(pairrm):
    """Every ordered pair is compared; the rewards are the aggregate of the logits that one forward of
    each encoded comparison gives, whatever the batching."""
    rm = PairRMReward(str(pairrm), device="cpu", batch_size=8)
    rewards = rm.score(CONV, RESPONSES)

    def logit(source, a, b):
        ids = torch.tensor([rm.encode_pair(source, a, b)])
        with torch.no_grad():
            return rm.model.compare(ids, torch.ones_like(ids)).item()

    for conv, rs, got in zip(CONV, RESPONSES, rewards):
        n = len(rs)
        c = np.array([[0.0 if i == j else logit(conv[0]["content"], rs[i], rs[j]) for j in range(n)]
                      for i in range(n)])
        assert got == pytest.approx(aggregate_scores(c).tolist(), abs=1e-5)
        assert sum(got) == pytest.approx(0.0, abs=1e-6)  # relative to the prompt's own samples
    assert len(set(rewards[0])) == 4  # the random head still tells the responses apart
    one_at_a_time = PairRMReward(str(pairrm), device="cpu", batch_size=1).score(CONV, RESPONSES)
    assert [x for r in one_at_a_time for x in r] == pytest.approx([x for r in rewards for x in r], abs=1e-5)


def test_inputs_follow_pairrms_layout_and_budget(pairrm):
    """``<|source|> x <|candidate1|> a <|candidate2|> b``, each prefix once (a prefix inside a response is
    blanked), the source cut to source_max_length and each candidate to half of what it leaves."""
    rm = PairRMReward(str(pairrm), device="cpu", source_max_length=8, candidate_max_length=6)
    tok = rm.tokenizer
    ids = rm.encode_pair("write a python function " * 5, "<|candidate2|> hi " * 20, "hello there " * 20)
    prefixes = [tok.convert_tokens_to_ids(t) for t in ("<|source|>", "<|candidate1|>", "<|candidate2|>")]
    assert [ids.count(p) for p in prefixes] == [1, 1, 1]
    assert ids.index(prefixes[0]) < ids.index(prefixes[1]) < ids.index(prefixes[2])
    source = ids[:ids.index(prefixes[1])]
    assert len(source) == 8 and len(ids) - len(source) == 2 * ((8 + 2 * 6 - 8) // 2)


def test_a_folder_that_is_not_pairrm_is_refused_before_it_loads(models, pairrm, tmp_path):
    from eva_plugin.checks import check_pairrm

    check_pairrm(str(pairrm), "eva.reward_model")  # passes
    with pytest.raises(RecipeError, match=r"^`eva.reward_model`: .* is not a PairRM checkpoint \(model_type is "
                                          r"'llama', not deberta-v2\); .*PairRM-hf"):
        check_pairrm(str(models["reward"]), "eva.reward_model")
    config = json.loads((pairrm / "config.json").read_text())
    del config["cand2_prefix_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match="config.json has no cand2_prefix_id"):
        check_pairrm(str(tmp_path), "eva.creator_reward_model")


# --- two reward models: the creator's and the solver's ---------------------------------------------


def test_creator_reward_keys_are_checked_when_the_recipe_is_read(write_recipe, models):
    from eva_plugin.recipe import load_recipe

    def refused(eva: dict) -> str:
        with pytest.raises(RecipeError) as err:
            load_recipe(["--config", str(write_recipe(eva=eva))])
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "creator_reward_model is null" in refused({"creator_reward_type": "embedding"})
    assert "creator_reward_model is null" in refused({"creator_reward_options": {"batch_size": 2}})
    message = refused({"creator_reward_model": str(models["encoder"]), "creator_reward_type": "armo"})
    assert "unknown eva.creator_reward_type 'armo'; known:" in message and "pairrm" in message
    assert "eva.creator_reward_options" in refused({"creator_reward_model": str(models["encoder"]),
                                                    "creator_reward_type": "embedding",
                                                    "creator_reward_options": {"batch_sise": 2}})
    assert "secrets are not read" in refused({"creator_reward_model": str(models["encoder"]),
                                              "creator_reward_options": {"api-key": "abcdefgh"}})
    recipe = load_recipe(["--config", str(write_recipe(eva={"creator_reward_model": str(models["encoder"]),
                                                             "creator_reward_type": "embedding"}))])
    creator, solver = recipe.eva.rewarder("creator"), recipe.eva.rewarder("solver")
    assert (creator.model, creator.type, solver.model, solver.type) == (
        str(models["encoder"]), "embedding", str(models["reward"]), "sequence_classification")
    assert not recipe.eva.one_rewarder()


def test_a_pairrm_of_another_layout_is_refused_before_any_model_loads(write_recipe, models, capsys):
    from eva_plugin.dpo import main

    recipe = write_recipe(eva={"reward_model": str(models["reward"]), "reward_type": "pairrm"})
    assert main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "`eva.reward_model`:" in err and "not a PairRM checkpoint" in err


@pytest.fixture(scope="module")
def sppo_run(recipe_writer, models, pairrm, tmp_path_factory):
    """One EVA round of soft SPPO up to its pairs: the creator ranks with a point-wise reward model, the
    solver's pairs come from PairRM (the EVA authors' SPPO setting, tiny)."""
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    write = recipe_writer(tmp_path_factory.mktemp("sppo"))
    eva = {"iterations": 1, "loss": "sppo", "reward_model": str(pairrm), "reward_type": "pairrm",
           "creator_reward_model": str(models["reward"]), "creator_reward_type": "sequence_classification",
           "creator_reward_options": {"batch_size": 4}}
    recipe = load_recipe(["--config", str(write(eva=eva))])
    run(recipe, stop_after="iter_1/pairs")
    return recipe.output_dir / "iter_1"


def _manifest(folder, stage: str) -> dict:
    return json.loads((folder / stage / "manifest.json").read_text())


def test_creator_and_solver_manifests_name_their_own_reward_models(sppo_run, models, pairrm):
    """Each names its model as ``path@sha256:<content>`` (a local folder is fingerprinted by its files)."""
    creator, solver = _manifest(sppo_run, "creator_rewards"), _manifest(sppo_run, "solver_rewards")
    assert (creator["config"]["reward_model"].split("@sha256:")[0], creator["config"]["reward_type"]) == (
        str(models["reward"]), "sequence_classification")
    assert (solver["config"]["reward_model"].split("@sha256:")[0], solver["config"]["reward_type"]) == (
        str(pairrm), "pairrm")
    assert _manifest(sppo_run, "pairs")["config"]["solver_rewards"] == solver["fingerprint"]


def test_reused_creator_samples_are_scored_again_by_the_solvers_model(sppo_run):
    """Buffer prompts reuse the creator's responses, not its rewards: every solver reward is PairRM's
    (its scores sum to 0 over a prompt's samples; the creator's point-wise rewards do not)."""
    sampled = load_from_disk(str(sppo_run / "solver_samples" / "data"))
    scored = load_from_disk(str(sppo_run / "solver_rewards" / "data"))
    reused = sum(sampled["reused"])
    assert reused > 0
    assert _manifest(sppo_run, "solver_rewards")["reused_responses_rescored"] == reused
    assert all(sum(r) == pytest.approx(0.0, abs=1e-5) for r in scored["rewards"])
    creator = {r["prompt_id"]: r["rewards"] for r in load_from_disk(str(sppo_run / "creator_rewards" / "data"))}
    again = [r for r, was in zip(scored, sampled["reused"]) if was]
    assert all(r["rewards"] != creator[r["prompt_id"]][:len(r["rewards"])] for r in again)


def test_sppo_probabilities_come_from_pairrms_scores(sppo_run):
    """P(y) = (1/n) Σ_j σ(s_y − s_j) over all n samples on PairRM's aggregate scores (compute_prob.py)."""
    scored = {r["prompt_id"]: r["rewards"] for r in load_from_disk(str(sppo_run / "solver_rewards" / "data"))}
    pairs = load_from_disk(str(sppo_run / "pairs" / "data"))
    assert len(pairs) > 0

    def p(s, scores):
        return sum(1 / (1 + math.exp(-(s - x))) for x in scores) / len(scores)

    for row in pairs:
        scores = scored[row["prompt_id"]]
        assert row["chosen_reward"] == pytest.approx(max(scores))
        assert row["chosen_probability"] == pytest.approx(p(max(scores), scores), abs=1e-6)
        assert row["rejected_probability"] == pytest.approx(p(min(scores), scores), abs=1e-6)


def test_a_pair_judge_cannot_score_the_held_out_evaluation(write_recipe, models, prompts_file, tmp_path):
    """Its scores are relative to a prompt's own samples (every mean is the same): an evaluation needs the
    creator's point-wise reward model."""
    from eva_plugin.recipe import load_recipe

    held = tmp_path / "held.jsonl"
    held.write_text('{"prompt": "name a colour"}\n{"prompt": "name a fruit"}\n')
    judge = {"reward_model": str(models["pairrm"]), "reward_type": "pairrm", "eval_prompts": str(held)}
    with pytest.raises(RecipeError, match=r"held-out evaluation .* eva.reward_type pairrm .* set "
                                          r"eva.creator_reward_model to a point-wise reward model"):
        load_recipe(["--config", str(write_recipe(eva=judge))])
    creator = {"creator_reward_model": str(models["reward"]), "creator_reward_type": "sequence_classification"}
    recipe = load_recipe(["--config", str(write_recipe(eva={**judge, **creator}))])
    assert recipe.eva.rewarder("creator").type == "sequence_classification"
