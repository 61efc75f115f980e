"""Pair-wise preference rewards on a tiny causal LM judge."""

import pytest
import torch

from eva_plugin.rewards.pairwise import PairwisePreferenceReward

CONV = [[{"role": "user", "content": "name a prime number"}], [{"role": "user", "content": "say hi"}]]
RESPONSES = [["seven", "four is prime", "2", "nine"], ["hi", "hello there"]]


def test_both_orders_make_win_rates_complementary(models):
    rm = PairwisePreferenceReward(str(models["policy"]), order="both")
    rewards = rm.score(CONV, RESPONSES)
    assert [len(r) for r in rewards] == [4, 2]
    for r, rs in zip(rewards, RESPONSES):
        assert sum(r) == pytest.approx(len(rs) / 2)  # every comparison hands out exactly one win
        assert all(0 <= x <= 1 for x in r)


def test_left_padded_length_batches_match_one_at_a_time(models):
    batched = PairwisePreferenceReward(str(models["policy"]), batch_size=8).score(CONV, RESPONSES)
    single = PairwisePreferenceReward(str(models["policy"]), batch_size=1).score(CONV, RESPONSES)
    assert [x for r in batched for x in r] == pytest.approx([x for r in single for x in r], abs=1e-5)


def test_two_responses_match_a_direct_forward(models):
    rm = PairwisePreferenceReward(str(models["policy"]), order="both")
    a, b = RESPONSES[1]

    def p_first(x, y):
        text = rm.render("say hi", x, y)
        ids = rm.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(rm.model.device)
        with torch.no_grad():
            logits = rm.model(**ids).logits[0, -1, torch.tensor(rm.label_ids, device=rm.model.device)]
        return torch.softmax(logits.float(), -1)[0].item()

    expected = (p_first(a, b) + 1 - p_first(b, a)) / 2
    (reward,) = rm.score(CONV[1:], RESPONSES[1:])
    assert reward[0] == pytest.approx(expected, abs=1e-5)
    assert reward[1] == pytest.approx(1 - expected, abs=1e-5)
    assert "[CONTEXT] say hi [RESPONSE A] hi [RESPONSE B] hello there" in rm.render("say hi", a, b)


def test_random_order_is_seeded_and_judges_each_pair_once(models):
    first = PairwisePreferenceReward(str(models["policy"]), order="random", seed=3).score(CONV, RESPONSES)
    again = PairwisePreferenceReward(str(models["policy"]), order="random", seed=3).score(CONV, RESPONSES)
    assert first == again
    rm = PairwisePreferenceReward(str(models["policy"]), order="random", seed=3)
    seen = []
    rm.prob_first_wins = lambda texts: seen.extend(texts) or [0.5] * len(texts)
    rm.score(CONV, RESPONSES)
    assert len(seen) == 6 + 1  # C(4,2) + C(2,2) comparisons


def test_pairwise_reward_in_the_loop(write_recipe, models):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    eva = {"iterations": 1, "reward_type": "pairwise", "reward_model": str(models["policy"]),
           "reward_options": {"order": "both"}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    run(recipe, stop_after="pairs")
    from datasets import load_from_disk

    scored = load_from_disk(str(recipe.output_dir / "iter_1" / "creator_rewards" / "data"))
    assert all(sum(r) == pytest.approx(len(r) / 2) for r in scored["rewards"])


def test_only_the_answer_positions_logits_are_computed(models):
    """All n(n − 1) comparisons' [B, L, V] logits would be gigabytes at a 128K vocabulary: the judge's
    forward returns [B, 1, V] (``logits_to_keep=1``), and the win rates still match a full forward
    (``test_two_responses_match_a_direct_forward``)."""
    rm = PairwisePreferenceReward(str(models["policy"]), batch_size=4)
    shapes: list[tuple[int, ...]] = []
    rm.model.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.logits.shape)))
    rm.score(CONV, RESPONSES)
    assert sum(s[0] for s in shapes) == 2 * (6 + 1)  # both orders of every pair
    assert all(s[1] == 1 and s[2] == rm.model.config.vocab_size for s in shapes)
