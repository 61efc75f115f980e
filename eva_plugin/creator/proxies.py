"""Informativeness proxies (EVA §2, Table 3) and how their values become sampling weights.

A proxy maps the rewards of one prompt's sampled responses to a number. ``inverse``
proxies prefer *small* values of their base statistic; the authors' code weights them
with ``1 - minmax(base)`` rather than ``minmax(1 / base)``, which we follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

WEIGHTINGS = ("minmax", "proportional")


@dataclass(frozen=True)
class Proxy:
    """An informativeness proxy: ``base(rewards)`` and whether small values are preferred."""

    base: Callable[[np.ndarray], float]
    inverse: bool = False
    description: str = ""

    def info(self, rewards: Sequence[float]) -> float:
        """The proxy value as the paper defines it (``1 / base`` for inverse proxies)."""
        value = float(self.base(np.asarray(rewards, dtype=np.float64)))
        if not self.inverse:
            return value
        return float("inf") if value == 0 else 1.0 / value


def _advantage_min(r: np.ndarray) -> float:
    return r.max() - r.min()


def _advantage_avg(r: np.ndarray) -> float:
    return r.max() - r.mean()


BUILTIN_PROXIES: dict[str, Proxy] = {
    "a_min": Proxy(_advantage_min, description="max reward - min reward (EVA default)"),
    "a_avg": Proxy(_advantage_avg, description="max reward - mean reward"),
    "variance": Proxy(np.var, description="variance of the rewards"),
    "mean": Proxy(np.mean, description="mean reward"),
    "inv_mean": Proxy(np.mean, inverse=True, description="1 / mean reward"),
    "inv_a_min": Proxy(_advantage_min, inverse=True, description="1 / (max - min)"),
    "uniform": Proxy(lambda r: 1.0, description="every prompt equally informative"),
}


#: a prompt needs this many finite rewards to say anything about its informativeness
MIN_FINITE = 2


def finite(rewards: Sequence[float]) -> np.ndarray:
    """The finite rewards of one prompt (NaN and ±inf dropped: a reward model that could not score)."""
    r = np.asarray(rewards, dtype=np.float64)
    return r[np.isfinite(r)]


def usable(rewards: Sequence[float]) -> bool:
    """Whether a prompt has enough finite rewards to be scored (``MIN_FINITE``)."""
    return len(finite(rewards)) >= MIN_FINITE


def proxy_bases(proxy: Proxy, rewards: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array([float(proxy.base(np.asarray(r, dtype=np.float64))) for r in rewards])


def weights(proxy: Proxy, rewards: Sequence[Sequence[float]], weighting: str = "minmax") -> np.ndarray:
    """Normalised sampling weights, one per prompt, summing to one.

    ``minmax``: ``w = (v - min v) / (max v - min v)`` on the base value (``1 - w`` for
    inverse proxies), as in the authors' scripts, so the least informative prompt gets 0.
    ``proportional``: ``w ∝ info``; an infinite value (an inverse proxy of 0) is capped at
    the largest finite one, and if any value is negative all are shifted so the smallest is 0.
    A zero weight stays zero unless every weight is zero, in which case all are equal.
    Non-finite rewards are dropped per prompt; a prompt left with fewer than ``MIN_FINITE``
    finite rewards is excluded (weight 0) and the others are weighted among themselves.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
    keep = [i for i, r in enumerate(rewards) if usable(r)]
    out = np.zeros(len(rewards))
    if keep:
        out[keep] = _weights(proxy, [finite(rewards[i]) for i in keep], weighting)
    return out


def _weights(proxy: Proxy, rewards: Sequence[np.ndarray], weighting: str) -> np.ndarray:
    n = len(rewards)
    if weighting == "minmax":
        v = proxy_bases(proxy, rewards)
        span = v.max() - v.min()
        w = np.zeros(n) if span == 0 else (v - v.min()) / span
        if proxy.inverse and span != 0:
            w = 1.0 - w
    else:
        w = np.array([proxy.info(r) for r in rewards])
        finite = np.isfinite(w)
        if not finite.all():
            w[~finite] = w[finite].max() if finite.any() else 1.0
        if w.min() < 0:
            w = w - w.min()
    total = w.sum()
    if total <= 0:
        return np.full(n, 1.0 / n)
    return w / total
