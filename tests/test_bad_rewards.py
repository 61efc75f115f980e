"""NaN / ±inf rewards: dropped per response and counted, never in pairs, weights or manifests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from datasets import load_from_disk

from eva_plugin import hookimpl, plugins
from eva_plugin.creator.proxies import BUILTIN_PROXIES, weights
from eva_plugin.dpo import run_recipe as run
from eva_plugin.recipe import load_recipe
from eva_plugin.solver.pairs import build_pairs


class OddRewards:
    """Rewards = the response's index, except: every response to a prompt about the sea is NaN, and
    elsewhere response 0 is NaN, response 1 is +inf (it would be chosen), response 2 is -inf."""

    def score(self, conversations, responses):
        out = []
        for conv, ys in zip(conversations, responses):
            if "the sea" in conv[0]["content"]:
                out.append([math.nan] * len(ys))
            else:
                bad = {0: math.nan, 1: math.inf, 2: -math.inf}
                out.append([bad.get(j, float(j)) for j in range(len(ys))])
        return out

    def close(self):
        pass


class OddRewardFactory:
    """A reward-model factory without options (``Options`` absent)."""

    @staticmethod
    def from_options(path, options, context):
        return OddRewards()


class OddRewardPlugin:
    @hookimpl
    def register_reward_models(self, register):
        register("odd", OddRewardFactory)


@pytest.fixture
def odd_reward():
    plugins.plugin_manager().register(OddRewardPlugin(), name="odd-reward")
    plugins.registry.cache_clear()
    yield
    plugins.reset()


def _strict(path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _expected_nonfinite(ds, prompts_col="prompt"):
    return sum(len(ys) if "the sea" in p else min(3, len(ys)) for p, ys in zip(ds[prompts_col], ds["responses"]))


def _check_run(out, creator_on):
    for manifest in out.rglob("manifest.json"):
        _strict(manifest)
    it = out / "iter_1"
    solver = load_from_disk(str(it / "solver_rewards" / "data"))
    fresh = [not r for r in solver["reused"]]
    expected = sum(n for n, f in zip([_expected_nonfinite(solver.select([i])) for i in range(len(solver))], fresh)
                   if f)
    assert _strict(it / "solver_rewards" / "manifest.json")["nonfinite_rewards"] == expected > 0
    pairs_manifest = _strict(it / "pairs" / "manifest.json")
    sea = sum("the sea" in p for p in solver["prompt"])
    assert pairs_manifest.get("dropped_nonfinite", 0) == sea
    pairs = load_from_disk(str(it / "pairs" / "data"))
    assert len(pairs) > 0 and pairs_manifest["pairs"] == len(pairs)
    assert all(math.isfinite(r) for r in list(pairs["chosen_reward"]) + list(pairs["rejected_reward"]))
    assert all(math.isfinite(p) for p in list(pairs["chosen_probability"]) + list(pairs["rejected_probability"]))
    assert math.isfinite(pairs_manifest["mean_chosen_reward"])
    if creator_on:
        creator = load_from_disk(str(it / "creator_rewards" / "data"))
        stats = _strict(it / "creator_rewards" / "manifest.json")
        assert stats["nonfinite_rewards"] == _expected_nonfinite(creator) > 0
        scores = load_from_disk(str(it / "scores" / "data"))
        for row in scores:
            if "the sea" in row["prompt"]:
                assert row["excluded"] == "nonfinite_rewards" and row["weight"] == 0 and math.isnan(row["info"])
            else:
                assert row["excluded"] == "" and math.isfinite(row["weight"])
        assert _strict(it / "scores" / "manifest.json")["excluded_nonfinite"] == 1
        selected = load_from_disk(str(it / "selected" / "data"))
        assert not any("the sea" in p for p in selected["prompt"]) and len(selected) > 0


@pytest.mark.parametrize("proxy", ["a_min", "uniform"])
def test_an_eva_iteration_runs_through_nonfinite_rewards(write_recipe, tmp_path, odd_reward, proxy, caplog):
    path = write_recipe(output_dir=str(tmp_path / "out"),
                        eva={"reward_type": "odd", "proxy": proxy, "num_samples": 6, "solver_samples": 6,
                             "subset_fraction": 1.0})
    with caplog.at_level("WARNING"):
        run(load_recipe(["--config", str(path)]), stop_after="iter_1/pairs")
    _check_run(tmp_path / "out", creator_on=True)
    warned = [r for r in caplog.records if "creator rewards are not finite" in r.getMessage()]
    assert len(warned) == 1


def test_a_creator_none_iteration_runs_through_nonfinite_rewards(write_recipe, tmp_path, odd_reward):
    path = write_recipe(output_dir=str(tmp_path / "out"), creator="none",
                        eva={"reward_type": "odd", "solver_samples": 6})
    run(load_recipe(["--config", str(path)]), stop_after="iter_1/pairs")
    _check_run(tmp_path / "out", creator_on=False)


def test_pairs_drop_nonfinite_rewards_per_response():
    rows = [
        {"prompt_id": "a", "prompt": "a", "responses": ["x", "y", "z"], "rewards": [math.nan, 1.0, 2.0]},
        {"prompt_id": "b", "prompt": "b", "responses": ["x", "y"], "rewards": [math.nan, 1.0]},
        {"prompt_id": "c", "prompt": "c", "responses": ["x", "y", "z"], "rewards": [math.inf, 1.0, -math.inf]},
        {"prompt_id": "d", "prompt": "d", "responses": ["x", "x", "z"], "rewards": [math.nan, 1.0, 2.0]},
    ]
    pairs, stats = build_pairs(rows)
    assert stats == {"pairs": 2, "dropped_nonfinite": 2}  # a NaN at index 0 is not "identical"
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("z", "y"), ("z", "x")]
    # P(z) over the finite responses only, j = z included (it contributes ½): (σ(0) + σ(2 − 1)) / 2
    assert pairs[0]["chosen_probability"] == pytest.approx((0.5 + 1 / (1 + math.exp(-1))) / 2)


def test_weights_never_see_nonfinite_rewards():
    rewards = [[math.nan, 1.0, 3.0], [math.nan, math.nan, 1.0], [0.0, 1.0, math.inf], [0.0, 0.5, 0.6]]
    for name in ("a_min", "uniform", "inv_a_min", "variance"):
        for weighting in ("minmax", "proportional"):
            w = weights(BUILTIN_PROXIES[name], rewards, weighting)
            assert np.isfinite(w).all() and w[1] == 0 and w.sum() == pytest.approx(1.0)
    assert weights(BUILTIN_PROXIES["a_min"], [[math.nan, 1.0]], "minmax").tolist() == [0.0]
