"""Mixing evolved prompts with a buffer of the previous prompt set (EVA §2 step 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixPlan:
    """Indices into the evolved pool and the buffer that make up the new prompt set."""

    evolved: list[int]
    buffer: list[int]
    shortfall: int  # evolved prompts wanted but missing, filled from the buffer


def plan_mix(
    num_evolved: int, num_buffer: int, size: int, evolved_fraction: float, rng: np.random.Generator
) -> MixPlan:
    """Draw ``round(size * evolved_fraction)`` evolved and the rest buffer prompts, uniformly.

    If the evolved pool is too small the buffer fills the gap; the set is never padded
    with repeats, so it can come out smaller than ``size`` only if both sources run dry.
    """
    want_evolved = min(size, math.floor(size * evolved_fraction + 0.5))
    take_evolved = min(want_evolved, num_evolved)
    take_buffer = min(size - take_evolved, num_buffer)
    evolved = sorted(rng.choice(num_evolved, size=take_evolved, replace=False).tolist())
    buffer = sorted(rng.choice(num_buffer, size=take_buffer, replace=False).tolist())
    return MixPlan(evolved, buffer, max(0, want_evolved - take_evolved))
