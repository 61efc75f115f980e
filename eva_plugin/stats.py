"""The two summaries the evaluation, the judge and ``eva compare`` report: a mean with its standard
error, and two policies compared prompt by prompt (standard library only)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import mean, stdev


def mean_stderr(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and standard error of the finite values (None and NaN/±inf left out); (None, None) when
    none is left, stderr 0.0 for a single value."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None, None
    return mean(kept), (stdev(kept) / math.sqrt(len(kept)) if len(kept) > 1 else 0.0)


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict:
    """Policy A vs policy B on the prompts both answered (``{prompt_id: mean reward}``):
    ``difference`` = mean over prompts of A − B, its standard error ``stderr`` (over the per-prompt
    differences, so the prompts' own difficulty cancels), ``win_rate`` of A (ties half) and ``prompts``;
    None where no prompt has a finite reward on both sides."""
    diffs = [a[i] - b[i] for i in a if i in b and math.isfinite(a[i]) and math.isfinite(b[i])]
    difference, stderr = mean_stderr(diffs)
    wins = [1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs]
    return {"difference": difference, "stderr": stderr, "win_rate": mean(wins) if wins else None,
            "prompts": len(diffs)}
