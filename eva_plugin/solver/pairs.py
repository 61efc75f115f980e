"""Best/worst preference pairs from scored samples (EVA §2 step 6, RLHF Workflow)."""

from __future__ import annotations

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


def build_pairs(rows: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """TRL conversational preference rows (+ rewards, origin); counts of what was dropped and why."""
    pairs, dropped = [], Counter()
    for row in rows:
        responses, rewards = row["responses"], row["rewards"]
        choice = best_worst(responses, rewards)
        if choice is None:
            reason = "too_few" if len(responses) < 2 else (
                "tie" if max(rewards) == min(rewards) else "identical")
            dropped[reason] += 1
            continue
        hi, lo = choice
        pairs.append({
            "prompt_id": row["prompt_id"],
            "prompt": user_turn(row["prompt"]),
            "chosen": [{"role": "assistant", "content": responses[hi]}],
            "rejected": [{"role": "assistant", "content": responses[lo]}],
            "chosen_reward": float(rewards[hi]),
            "rejected_reward": float(rewards[lo]),
            "origin": row.get("origin", ""),
        })
    return pairs, {"pairs": len(pairs), **{f"dropped_{k}": v for k, v in dropped.items()}}
