"""Plugin outputs checked at the boundary (issue 20, class 4): a reward model that returns the wrong
number of rewards, ``None``, text, bools or values that overflow the proxies, a constant reward or one
that leaves no pair, an evolver that returns no list or no text, and a causal LM given as the
reward model are each one line naming the plugin.

The reward models and evolvers here are real plugins, registered through the plugin manager (the
boundary under test); the cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from catalogue import Case, Ctx, assert_case, recipe

from eva_plugin import hookimpl, plugins
from eva_plugin.creator.evolved import EvolvedPrompt

# the checks are imported by the unit tests only: the benchmark runs these CASES on older checkouts too


def _index(ys):
    return [float(j) for j in range(len(ys))]


#: reward type → score(conversations, responses); each breaks the contract one way
REWARDS = {
    "rm_short": lambda c, r: [_index(ys) for ys in r][:-1],
    "rm_short_row": lambda c, r: [_index(ys)[:-1] for ys in r],
    "rm_none": lambda c, r: [[None] * len(ys) for ys in r],
    "rm_row_none": lambda c, r: [None for ys in r],
    "rm_strings": lambda c, r: [[str(v) for v in _index(ys)] for ys in r],
    "rm_text_rows": lambda c, r: ["1.0" for ys in r],
    "rm_bools": lambda c, r: [[j % 2 == 0 for j in range(len(ys))] for ys in r],
    "rm_huge": lambda c, r: [[1e308 * (-1) ** j for j in range(len(ys))] for ys in r],
    "rm_constant": lambda c, r: [[0.5] * len(ys) for ys in r],
    "rm_ties": lambda c, r: [[float(i)] * len(ys) for i, ys in enumerate(r)],
}


def _reward_factory(fn):
    class Model:
        def score(self, conversations, responses):
            return fn(conversations, responses)

        def close(self):
            pass

    class Factory:
        @staticmethod
        def from_options(path, options, context):
            return Model()

    return Factory


#: evolver → evolve(seeds) result
EVOLVERS = {
    "ev_text": lambda seeds: "a new prompt",
    "ev_none_prompt": lambda seeds: [EvolvedPrompt(None, s["prompt_id"], "X", 1) for s in seeds],
    "ev_dicts": lambda seeds: [{"prompt": "p", "parent_id": s["prompt_id"]} for s in seeds],
    "ev_orphan": lambda seeds: [EvolvedPrompt("a new prompt about tea", "nobody", "X", 1)],
}


def _evolver_factory(fn):
    class Evolver:
        def evolve(self, seeds, generate, rng):
            return fn(seeds)

    class Factory:
        @staticmethod
        def from_options(options, context):
            return Evolver()

    return Factory


class BadPlugins:
    @hookimpl
    def register_reward_models(self, register):
        for name, fn in REWARDS.items():
            register(name, _reward_factory(fn))

    @hookimpl
    def register_evolvers(self, register):
        for name, fn in EVOLVERS.items():
            register(name, _evolver_factory(fn))


def _install(ctx: Ctx, monkeypatch) -> None:
    """Register the bad plugins (the catalogue's ``setup``; a test process forgets them afterwards).
    The models run before the refusal: their progress bars (loading, sampling, scoring) are switched
    off, as the model spy does for the data's, since a bar is not an error line."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    monkeypatch.setattr(transformers_logging, "_tqdm_active", False)
    monkeypatch.setenv("EVA_DISABLE_PROGRESS", "1")
    plugins.reset()
    plugins.plugin_manager().register(BadPlugins(), name="bad-plugins")
    plugins.registry.cache_clear()


@pytest.fixture(autouse=True)
def _forget_plugins():
    yield
    plugins.reset()


def _solver(reward: str):
    """A plain round (``creator: none``): solver samples of the 6 prompts of round 1 scored by ``reward``."""
    return recipe(creator="none", eva={"reward_type": reward})


def _creator(**eva):
    return recipe(eva=eva)


def _bad(build, expect: str) -> Case:
    return Case(build, expect, setup=_install, after_load=True)


G = "20.4"
CASES: dict[str, Case] = {
    "reward-too-few-lists": _bad(_solver("rm_short"), "reward model 'rm_short' returned 5 reward lists for 6 prompts"),
    "reward-too-few-in-a-list": _bad(_solver("rm_short_row"), "reward model 'rm_short_row' returned 3 rewards for a "
                                                              "prompt's 4 responses"),
    "reward-none": _bad(_solver("rm_none"), "reward model 'rm_none' returned None (NoneType) as a reward"),
    "reward-none-list": _bad(_solver("rm_row_none"), "reward model 'rm_row_none' returned None"),
    "reward-strings": _bad(_solver("rm_strings"), "reward model 'rm_strings' returned '0.0' (str) as a reward"),
    "reward-text-per-prompt": _bad(_solver("rm_text_rows"), "reward model 'rm_text_rows' returned '1.0' (str) for"),
    "reward-bools": _bad(_solver("rm_bools"), "reward model 'rm_bools' returned True (bool)"),
    "reward-overflow": _bad(_solver("rm_huge"), "reward model 'rm_huge' returned the reward 1e+308"),
    "reward-overflow-creator": _bad(_creator(reward_type="rm_huge"), "reward model 'rm_huge' returned the reward"),
    "reward-constant": _bad(_solver("rm_constant"), "gave all 24 responses to 6 prompts the same reward 0.5"),
    "reward-constant-creator": _bad(_creator(reward_type="rm_constant"), "creator rewards: reward model "
                                                                         "'rm_constant' gave all"),
    "reward-no-pairs": _bad(_solver("rm_ties"), "no usable preference pair from reward model 'rm_ties': of 6 "
                                                "prompts, 6 tie"),
    "evolver-returns-text": _bad(_creator(evolver="ev_text"), "evolver 'ev_text' returned 'a new prompt' (str)"),
    "evolver-prompt-none": _bad(_creator(evolver="ev_none_prompt"), "evolver 'ev_none_prompt' returned the prompt "
                                                                    "None"),
    "evolver-returns-dicts": _bad(_creator(evolver="ev_dicts"), "evolver 'ev_dicts' returned {'prompt'"),
    "evolver-unknown-parent": _bad(_creator(evolver="ev_orphan"), "parent_id 'nobody' is none of its seeds'"),
    "reward-model-is-a-causal-lm": Case(lambda ctx: recipe(eva={"reward_model": str(ctx.models["policy"])})(ctx),
                                        "is a causal LM (LlamaForCausalLM in config.json)"),
}
CASES = {name: replace(case, group=G) for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


RESPONSES = [["a", "b"], ["c", "d", "e"]]
REWARD_BOUND = 1e100  # plugin_outputs.REWARD_BOUND (asserted below)


def test_rewards_pass_as_floats_nan_and_inf_included():
    from eva_plugin.plugin_outputs import REWARD_BOUND as bound
    from eva_plugin.plugin_outputs import checked_rewards

    assert bound == REWARD_BOUND
    out = checked_rewards([np.array([1, 2.5]), (np.float32(0.5), math.nan, -math.inf)], RESPONSES, "rm")
    assert out[0] == [1.0, 2.5] and out[1][0] == 0.5 and math.isnan(out[1][1]) and out[1][2] == -math.inf
    assert checked_rewards(np.zeros((1, 2)), [["a", "b"]], "rm") == [[0.0, 0.0]]
    assert checked_rewards([[REWARD_BOUND, -REWARD_BOUND]], [["a", "b"]], "rm") == [[1e100, -1e100]]


@pytest.mark.parametrize("scores, fragment", [
    ([[1.0, 2.0]], "returned 1 reward lists for 2 prompts"),
    ([[1.0, 2.0], [1.0, 2.0, 3.0], [0.0]], "returned 3 reward lists for 2 prompts"),
    ([[1.0, 2.0], [1.0, 2.0]], "returned 2 rewards for a prompt's 3 responses"),
    ([[1.0, 2.0], [1.0, "2", 3.0]], "returned '2' (str) as a reward"),
    ([[1.0, np.bool_(True)], [1.0, 2.0, 3.0]], "returned True (bool)"),
    ([[1.0, 2.0], [1.0, None, 3.0]], "returned None (NoneType)"),
    ([[1.0, 2.0], [1.0, -1e101, 3.0]], "the reward -1e+101"),
    ([[1.0, 2.0], {"a": 1}], "{'a': 1} (dict) for a prompt's 3 responses"),
    (None, "returned None (NoneType) from score()"),
])
def test_broken_rewards_name_the_plugin_and_the_fault(scores, fragment):
    from eva_plugin.plugin_outputs import PluginOutputError, checked_rewards

    with pytest.raises(PluginOutputError, match=r"^reward model 'rm' ") as err:
        checked_rewards(scores, RESPONSES, "rm")
    assert fragment.replace("(", "").replace(")", "") in str(err.value).replace("(", "").replace(")", "")


def test_the_bound_keeps_the_proxies_finite():
    """The largest accepted rewards give finite variances, advantages and weights in float64."""
    from eva_plugin.creator.proxies import BUILTIN_PROXIES, weights

    rewards = [[REWARD_BOUND, -REWARD_BOUND, 0.0], [-REWARD_BOUND, REWARD_BOUND, REWARD_BOUND]] * 50
    for name in ("a_min", "variance", "a_avg", "mean"):
        for weighting in ("minmax", "proportional"):
            assert np.isfinite(weights(BUILTIN_PROXIES[name], rewards, weighting)).all()
    assert math.isfinite(float(np.var(np.array(rewards).ravel())))


def test_a_constant_reward_is_refused_only_over_distinct_responses():
    from eva_plugin.plugin_outputs import PluginOutputError, check_spread

    check_spread([[1.0, 1.0]], ["p"], [["same", "same"]], "rm", "x")  # identical texts truly tie
    check_spread([[1.0, 2.0], [1.0, 1.0]], ["p", "q"], [["a", "b"], ["c", "d"]], "rm", "x")
    check_spread([[1.0, math.nan], [math.nan, math.nan]], ["p", "q"], [["a", "b"], ["c", "d"]], "rm", "x")
    with pytest.raises(PluginOutputError, match="x: reward model 'rm' gave all 4 responses to 2 prompts the same "
                                                "reward 1 \\(4 distinct responses\\)"):
        check_spread([[1.0, 1.0], [1.0, math.nan]], ["p", "q"], [["a", "b"], ["c", "d"]], "rm", "x")


def test_evolver_results_are_checked():
    from eva_plugin.plugin_outputs import PluginOutputError, checked_evolved

    seeds = [{"prompt_id": "s1", "prompt": "p"}]
    good = [EvolvedPrompt("new", "s1", "X", 1), EvolvedPrompt("", "s1", "X", 2, status="empty")]
    assert checked_evolved(tuple(good), seeds, "ev") == good
    for bad, fragment in [(None, "returned None"), ([EvolvedPrompt(3, "s1", "X", 1)], "the prompt 3 (int)"),
                          ([EvolvedPrompt("x", "s1", "X", 1, status="great")], "the status 'great'"),
                          (["text"], "returned 'text' (str) in its list")]:
        with pytest.raises(PluginOutputError, match="^evolver 'ev' ") as err:
            checked_evolved(bad, seeds, "ev")
        assert fragment in str(err.value)


def test_no_pairs_names_every_reason_with_its_count():
    from eva_plugin.plugin_outputs import no_pairs_message

    line = no_pairs_message(2, {"pairs": 0, "dropped_tie": 3, "dropped_identical": 1, "dropped_nonfinite": 2}, 6, "rm")
    assert line.startswith("iteration 2: no usable preference pair from reward model 'rm': of 6 prompts, 3 tie")
    assert "1 have identical best and worst responses, 2 fewer than two finite rewards, 0 fewer than two" in line


def test_a_hub_cached_causal_lm_is_refused_as_reward_model(tmp_path, models, monkeypatch):
    """A hub id whose snapshot is in the cache is read like a folder (its config.json names a causal LM)."""
    import shutil

    from huggingface_hub import constants

    from eva_plugin.checks import check_reward_head
    from eva_plugin.errors import RecipeError

    repo = tmp_path / "hub" / "models--someone--tiny-lm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(models["policy"] / "config.json", repo / "snapshots" / ("0" * 40) / "config.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RecipeError, match="is a causal LM"):
        check_reward_head("someone/tiny-lm")
    check_reward_head("someone/not-downloaded")  # checked when it loads
