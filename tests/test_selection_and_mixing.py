import numpy as np
import pytest

from eva_plugin import plugins
from eva_plugin.creator.mixing import plan_mix
from eva_plugin.creator.selection import greedy, sample_without_replacement


def test_single_draw_frequencies_match_weights():
    w = np.array([0.5, 0.3, 0.2, 0.0])
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    for _ in range(20000):
        counts[sample_without_replacement(w, 1, rng)] += 1
    assert counts / counts.sum() == pytest.approx(w, abs=0.015)
    assert counts[3] == 0


def test_draws_are_distinct_and_skip_zero_weights_when_possible():
    w = np.array([0.1, 0.0, 0.4, 0.3, 0.2, 0.0])
    rng = np.random.default_rng(1)
    for _ in range(200):
        idx = sample_without_replacement(w, 3, rng)
        assert len(set(idx.tolist())) == 3
        assert not {1, 5} & set(idx.tolist())


def test_without_replacement_inclusion_favours_heavy_prompts():
    w = np.array([0.7, 0.1, 0.1, 0.1])
    rng = np.random.default_rng(2)
    hits = np.zeros(4)
    for _ in range(5000):
        hits[sample_without_replacement(w, 2, rng)] += 1
    # successive sampling: P(0 in pair) = 0.7 + 3 * 0.1 * 0.7 / 0.9
    assert hits[0] / 5000 == pytest.approx(0.7 + 0.3 * 0.7 / 0.9, abs=0.015)
    assert hits.sum() == 10000


def test_too_few_positive_weights_fill_from_the_rest():
    w = np.array([0.0, 1.0, 0.0, 0.0])
    idx = sample_without_replacement(w, 3, np.random.default_rng(0))
    assert 1 in idx.tolist() and len(set(idx.tolist())) == 3


def test_sampling_is_seeded():
    w = np.linspace(0.1, 1, 40)
    a = sample_without_replacement(w, 10, np.random.default_rng(42))
    b = sample_without_replacement(w, 10, np.random.default_rng(42))
    assert a.tolist() == b.tolist()


def test_greedy_takes_the_top_k():
    w = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    assert sorted(greedy(w, 2, np.random.default_rng(0)).tolist()) == [1, 3]


def test_every_registered_selector_picks_k_distinct_prompts_with_weight():
    """Each built-in selector, called as the selected stage calls it (``plugins.get``, then
    ``choose(weights, k, rng)``): k distinct prompts, none without weight while enough have some,
    the same draw for the same seed, and every prompt once when k exceeds the pool."""
    w = np.array([0.0, 0.3, 0.1, 0.0, 0.4, 0.2])
    builtins = sorted(n for n, e in plugins.registry("selectors").items() if e.source == plugins.BUILTIN)
    assert builtins
    for name in builtins:
        choose = plugins.get("selectors", name)
        for seed in range(20):
            idx = [int(i) for i in choose(w, 3, np.random.default_rng(seed))]
            assert len(set(idx)) == 3 and all(w[i] > 0 for i in idx), (name, idx)
            assert [int(i) for i in choose(w, 3, np.random.default_rng(seed))] == idx, name
        assert sorted(int(i) for i in choose(w, 10, np.random.default_rng(0))) == list(range(len(w))), name


def test_mix_is_80_20_of_the_original_size():
    plan = plan_mix(num_evolved=400, num_buffer=100, size=100, evolved_fraction=0.8, rng=np.random.default_rng(0))
    assert len(plan.evolved) == 80 and len(plan.buffer) == 20 and plan.shortfall == 0
    assert len(set(plan.evolved)) == 80 and max(plan.evolved) < 400


def test_mix_fills_a_small_evolved_pool_from_the_buffer():
    plan = plan_mix(num_evolved=5, num_buffer=100, size=20, evolved_fraction=0.8, rng=np.random.default_rng(0))
    assert len(plan.evolved) == 5 and len(plan.buffer) == 15 and plan.shortfall == 11


def test_mix_evolved_draw_is_uniform():
    rng = np.random.default_rng(3)
    counts = np.zeros(10)
    for _ in range(3000):
        counts[plan_mix(10, 10, 5, 0.8, rng).evolved] += 1
    assert counts / counts.sum() == pytest.approx(np.full(10, 0.1), abs=0.01)
