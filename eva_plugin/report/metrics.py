"""``iteration_metrics``: one iteration's report numbers as flat ``eva/…`` scalars, for experiment trackers."""

from __future__ import annotations

import math
from typing import Any

from eva_plugin.report.collect import EVAL_KEYS, JUDGED_KEYS, costs, evolved_outcomes, fields, stage_total, summary_rows


def iteration_metrics(manifests: dict[int, dict[str, dict]], t: int) -> dict[str, float]:
    """Iteration ``t``'s numbers as flat ``eva/…`` scalars (for experiment trackers): the summary
    table's numeric columns (``eva/mean_info``, ``eva/pairs``, …), ``eva/evolved/<outcome>`` and
    ``eva/evolved/dropped``, ``eva/eval/<key>``, ``eva/judged/<key>``, ``eva/seconds/<stage>``,
    ``eva/tokens/<stage>`` and ``eva/tokens_generated``; what the iteration has not published is left out."""
    one = {t: manifests.get(t, {})}
    flat: dict[str, Any] = {"iteration": t}
    for row in summary_rows(one):
        flat.update({name.replace(" ", "_"): value for name, value in row.items() if name != "iter"})
    outcomes = evolved_outcomes(one).get(t)
    if outcomes:
        flat.update({f"evolved/{outcome}": count for outcome, count in outcomes.items()})
        flat["evolved/dropped"] = sum(c for s, c in outcomes.items() if s != "kept")
    for stage, keys in (("eval", EVAL_KEYS), ("judged", JUDGED_KEYS)):  # judged's by_origin (a dict) drops out
        flat.update({f"{stage}/{k}": v for k, v in fields(one, stage, keys).get(t, {}).items()})
    for stage, cost in costs(one)[t].items():
        flat[f"seconds/{stage}"], flat[f"tokens/{stage}"] = cost["seconds"], cost["tokens_generated"]
    flat["tokens_generated"] = stage_total({"stage_costs": costs(one)}, t, "tokens_generated")
    return {f"eva/{k}": float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
