"""Choosing the informative subset: weighted sampling without replacement, or greedy top-k."""

from __future__ import annotations

import numpy as np


def sample_without_replacement(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` distinct indices with probability proportional to ``weights``.

    When fewer than ``k`` prompts have a positive weight, all of them are taken and the
    rest is drawn uniformly from the zero-weight prompts.
    """
    weights = np.asarray(weights, dtype=np.float64)
    k = min(k, len(weights))
    positive = np.flatnonzero(weights > 0)
    if len(positive) <= k:
        zero = np.flatnonzero(weights <= 0)
        extra = rng.choice(zero, size=k - len(positive), replace=False) if k > len(positive) else []
        return np.concatenate([positive, np.asarray(extra, dtype=np.int64)]).astype(np.int64)
    p = weights[positive] / weights[positive].sum()
    return positive[rng.choice(len(positive), size=k, replace=False, p=p)]


def greedy(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` highest weights (ties broken by a seeded shuffle)."""
    weights = np.asarray(weights, dtype=np.float64)
    order = rng.permutation(len(weights))
    ranked = order[np.argsort(-weights[order], kind="stable")]
    return ranked[: min(k, len(weights))]
