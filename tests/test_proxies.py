import numpy as np
import pytest

from eva_plugin import plugins
from eva_plugin.creator.proxies import BUILTIN_PROXIES, WEIGHTINGS, weights

REWARDS = [[1.0, 3.0, 2.0], [0.5, 0.5, 2.0], [2.0, 2.0, 2.0]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a_min", [2.0, 1.5, 0.0]),
        ("a_avg", [1.0, 1.0, 0.0]),
        ("variance", [2 / 3, 0.5, 0.0]),
        ("mean", [2.0, 1.0, 2.0]),
        ("inv_mean", [0.5, 1.0, 0.5]),
        ("inv_a_min", [0.5, 1 / 1.5, float("inf")]),
        ("uniform", [1.0, 1.0, 1.0]),
    ],
)
def test_proxy_values_on_fixed_rewards(name, expected):
    proxy = plugins.get("proxies", name)
    assert [proxy.info(r) for r in REWARDS] == pytest.approx(expected)


def test_every_registered_proxy_ranks_prompts_by_their_information():
    """Each built-in proxy, as the scores stage gets it (``plugins.get``), gives every prompt a finite
    value, and both weightings follow it: more information, more weight (an inverse proxy's
    information is 1 / its base, so it prefers small bases); under minmax the least informative
    prompt gets none. A constant proxy weights every prompt alike."""
    rewards = [[0.5, 1.0, 2.5], [1.0, 1.2, 1.4], [2.0, 4.0, 9.0], [0.2, 3.0, 3.1]]  # positive, spreads apart
    builtins = sorted(n for n, e in plugins.registry("proxies").items() if e.source == plugins.BUILTIN)
    assert builtins
    for name in builtins:
        proxy = plugins.get("proxies", name)
        info = np.array([proxy.info(r) for r in rewards])
        assert np.isfinite(info).all(), name
        for weighting in WEIGHTINGS:
            w = weights(proxy, rewards, weighting)
            assert w.sum() == pytest.approx(1.0) and (w >= 0).all(), (name, weighting)
            if np.ptp(info) == 0:
                assert w == pytest.approx([1 / len(rewards)] * len(rewards)), (name, weighting)
                continue
            assert len(set(info.round(9))) == len(rewards), name  # distinct values: the order below is strict
            assert np.argsort(w).tolist() == np.argsort(info).tolist(), (name, weighting)
            if weighting == "minmax":
                assert w[np.argmin(info)] == 0.0, name


def test_minmax_weights_follow_the_authors_normalisation():
    w = weights(BUILTIN_PROXIES["a_min"], REWARDS, "minmax")
    # v = [2, 1.5, 0] -> (v - 0) / 2 = [1, .75, 0] -> / 1.75
    assert w == pytest.approx([1 / 1.75, 0.75 / 1.75, 0.0])


def test_inverse_proxy_minmax_uses_one_minus_normalised_base():
    w = weights(BUILTIN_PROXIES["inv_a_min"], REWARDS, "minmax")
    # base = [2, 1.5, 0] -> minmax [1, .75, 0] -> 1 - that = [0, .25, 1] -> / 1.25
    assert w == pytest.approx([0.0, 0.2, 0.8])


def test_proportional_weights_and_zero_info():
    w = weights(BUILTIN_PROXIES["a_min"], REWARDS, "proportional")
    assert w == pytest.approx([2 / 3.5, 1.5 / 3.5, 0.0])
    assert w[2] == 0.0


def test_all_zero_info_gives_uniform_weights():
    flat = [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]]
    for weighting in ("minmax", "proportional"):
        assert weights(BUILTIN_PROXIES["a_min"], flat, weighting) == pytest.approx([1 / 3] * 3)


def test_uniform_proxy_gives_equal_weights():
    assert weights(BUILTIN_PROXIES["uniform"], REWARDS, "minmax") == pytest.approx([1 / 3] * 3)


def test_unknown_weighting_names_the_choices():
    with pytest.raises(ValueError, match="minmax, proportional"):
        weights(BUILTIN_PROXIES["a_min"], REWARDS, "softmax")


def test_weights_sum_to_one_on_random_rewards():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(50, 6)).tolist()
    for name, proxy in BUILTIN_PROXIES.items():
        for weighting in ("minmax", "proportional"):
            w = weights(proxy, rewards, weighting)
            assert w.sum() == pytest.approx(1.0), (name, weighting)
            assert (w >= 0).all()


def test_proportional_caps_infinite_inverse_values():
    rewards = [[1, 1, 1], [0, 1, 2], [0, 5, 10], [0, 2, 4]]
    w = weights(BUILTIN_PROXIES["inv_a_min"], rewards, "proportional")
    # info = [inf, 1/2, 1/10, 1/4] -> the infinite one is capped at 1/2
    assert w == pytest.approx(np.array([0.5, 0.5, 0.1, 0.25]) / 1.35)


def test_proportional_shifts_negative_values():
    rewards = [[-3.0, -1.0], [-2.0, -2.0], [-1.5, -0.5]]  # means -2, -2, -1
    w = weights(BUILTIN_PROXIES["mean"], rewards, "proportional")
    assert w == pytest.approx([0.0, 0.0, 1.0])
