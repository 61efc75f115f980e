"""Best/worst preference pairs from scored samples (EVA §2 step 6, RLHF Workflow)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from eva_plugin.data import user_turn


def best_worst(responses: list[str], rewards: list[float]) -> tuple[int, int] | None:
    """Indices of the highest and lowest reward, or ``None`` for a tie or identical texts."""
    if len(responses) < 2:
        return None
    hi = max(range(len(rewards)), key=lambda i: rewards[i])
    lo = min(range(len(rewards)), key=lambda i: rewards[i])
    if rewards[hi] == rewards[lo] or responses[hi].strip() == responses[lo].strip():
        return None
    return hi, lo


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def win_probability(rewards: list[float], i: int, pairwise: bool = False) -> float:
    """P(y_i wins) among the prompt's samples, for soft SPPO.

    A ``pairwise`` judge's reward already is a win probability; scores (point-wise rewards, and
    PairRM's aggregate scores, which is what the SPPO authors feed it) go through Bradley–Terry as
    they compute it (``compute_prob.py``): (1/n) Σ_j σ(r_i − r_j) over all n samples, j = i included
    (it adds ½/n), so P lies in [1/(2n), 1 − 1/(2n)].
    """
    if pairwise:
        return float(rewards[i])
    return sum(_sigmoid(float(rewards[i]) - float(r)) for r in rewards) / len(rewards)


def build_pairs(rows: Iterable[dict], *, pairwise: bool = False) -> tuple[list[dict], dict[str, int]]:
    """TRL conversational preference rows (+ rewards, win probabilities, origin); counts of what was
    dropped and why. ``pairwise``: the rewards are a pair-wise model's win probabilities.

    Responses whose reward is not finite (NaN, ±inf) are left out before best/worst and the win
    probabilities; a prompt with fewer than two finite rewards is dropped as ``nonfinite``."""
    pairs, dropped = [], Counter()
    for row in rows:
        kept = [i for i, r in enumerate(row["rewards"]) if math.isfinite(float(r))]
        responses = [row["responses"][i] for i in kept]
        rewards = [float(row["rewards"][i]) for i in kept]
        choice = best_worst(responses, rewards)
        if choice is None:
            if len(row["responses"]) < 2:
                reason = "too_few"
            elif len(responses) < 2:
                reason = "nonfinite"
            else:
                reason = "tie" if max(rewards) == min(rewards) else "identical"
            dropped[reason] += 1
            continue
        hi, lo = choice
        pairs.append({
            "prompt_id": row["prompt_id"],
            "prompt": user_turn(row["prompt"]),
            "chosen": [{"role": "assistant", "content": responses[hi]}],
            "rejected": [{"role": "assistant", "content": responses[lo]}],
            "chosen_reward": rewards[hi],
            "rejected_reward": rewards[lo],
            "chosen_probability": win_probability(rewards, hi, pairwise),
            "rejected_probability": win_probability(rewards, lo, pairwise),
            "origin": row.get("origin", ""),
        })
    return pairs, {"pairs": len(pairs), **{f"dropped_{k}": v for k, v in dropped.items()}}
