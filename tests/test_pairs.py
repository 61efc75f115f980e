import pytest

from eva_plugin.solver.pairs import best_worst, build_pairs, win_probability


def test_best_and_worst_are_chosen_and_rejected():
    assert best_worst(["a", "b", "c"], [0.1, 0.9, -0.3]) == (1, 2)


def test_ties_and_identical_responses_are_dropped():
    assert best_worst(["a", "b"], [0.5, 0.5]) is None
    assert best_worst(["same", "same "], [0.9, 0.1]) is None


def test_build_pairs_emits_trl_conversational_rows_and_counts_drops():
    rows = [
        {"prompt_id": "p1", "prompt": "hi", "responses": ["good", "bad", "ok"], "rewards": [2.0, -1.0, 0.5],
         "origin": "evolved"},
        {"prompt_id": "p2", "prompt": "tie", "responses": ["x", "y"], "rewards": [1.0, 1.0]},
        {"prompt_id": "p3", "prompt": "dup", "responses": ["z", "z"], "rewards": [1.0, 0.0]},
    ]
    pairs, stats = build_pairs(rows)
    assert stats == {"pairs": 1, "dropped_tie": 1, "dropped_identical": 1}
    (pair,) = pairs
    assert pair["prompt"] == [{"role": "user", "content": "hi"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (2.0, -1.0)
    assert pair["origin"] == "evolved"


def test_pairs_carry_win_probabilities_for_soft_sppo():
    import math

    rows = [{"prompt_id": "p1", "prompt": "hi", "responses": ["good", "bad", "ok"], "rewards": [2.0, -1.0, 0.5]}]
    (pair,), _ = build_pairs(rows)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # Bradley–Terry over all three samples, itself included (σ(0) = ½), as the SPPO authors compute it
    assert pair["chosen_probability"] == pytest.approx((sig(3.0) + sig(1.5) + 0.5) / 3)
    assert pair["rejected_probability"] == pytest.approx((sig(-3.0) + sig(-1.5) + 0.5) / 3)
    rows[0]["rewards"] = [0.8, 0.1, 0.6]  # a pair-wise reward is the mean win probability itself
    (pair,), _ = build_pairs(rows, pairwise=True)
    assert (pair["chosen_probability"], pair["rejected_probability"]) == (0.8, 0.1)


@pytest.mark.parametrize("n", [4, 6])
def test_win_probability_is_the_sppo_authors_estimator(n):
    """P(y_i) = (1/n) Σ_j σ(s_i − s_j) over all j, j = i included: the probability matrix of the SPPO
    authors' ``compute_prob.py`` (prb[i][j] = 1 / (1 + exp(s_j − s_i))) summed over its row, divided by n."""
    import numpy as np

    scores = np.random.default_rng(n).normal(size=n) * 2
    matrix = 1 / (1 + np.exp(scores[None, :] - scores[:, None]))
    direct = matrix.sum(axis=1) / n
    ours = [win_probability(list(scores), i) for i in range(n)]
    assert ours == pytest.approx(list(direct), rel=1e-12)
    assert min(ours) >= 1 / (2 * n) and max(ours) <= 1 - 1 / (2 * n)
    assert sum(ours) == pytest.approx(n / 2)  # σ(a) + σ(−a) = 1 over every ordered pair, ½ on the diagonal
