"""``eva compare RUN_A RUN_B``: two runs' report numbers side by side, and their held-out rewards
compared prompt by prompt."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from eva_plugin.report.collect import collect, stage_total
from eva_plugin.report.run_folder import iteration_dirs, load
from eva_plugin.report.text import fmt, table
from eva_plugin.stats import paired_difference


def _row(data: dict, t: int) -> dict:
    return next((r for r in data["summary"] if r["iter"] == t), {})


#: (metric, how it reads one run's ``collect`` numbers at iteration t), in the order shown
COMPARE_ROWS = [
    ("mean info", lambda d, t: _row(d, t).get("mean info")),
    ("selected", lambda d, t: _row(d, t).get("selected")),
    ("evolved kept/dropped", lambda d, t: _row(d, t).get("evolved kept/dropped")),
    ("pairs", lambda d, t: _row(d, t).get("pairs")),
    ("chosen r", lambda d, t: _row(d, t).get("chosen r")),
    ("rejected r", lambda d, t: _row(d, t).get("rejected r")),
    ("dpo loss", lambda d, t: _row(d, t).get("dpo loss")),
    ("reward acc", lambda d, t: _row(d, t).get("reward acc")),
    ("eval mean reward", lambda d, t: d["eval"].get(t, {}).get("mean_reward")),
    ("eval win rate", lambda d, t: d["eval"].get(t, {}).get("win_rate")),
    ("prompt complexity", lambda d, t: d.get("judged", {}).get(t, {}).get("mean_complexity")),
    ("prompt quality", lambda d, t: d.get("judged", {}).get(t, {}).get("mean_quality")),
    ("mean prompt chars", lambda d, t: d["prompt_length"].get(t, {}).get("mean_chars")),
    ("seconds", lambda d, t: stage_total(d, t, "seconds")),
    ("tokens", lambda d, t: stage_total(d, t, "tokens_generated")),
]


def compare_text(run_a: Path, run_b: Path) -> str:
    """Two runs side by side, one block per iteration, a column per run."""
    a, b = collect(Path(run_a)), collect(Path(run_b))
    name_a, name_b = _label(a, Path(run_a)), _label(b, Path(run_b))
    if name_a == name_b:
        name_a, name_b = f"A: {name_a}", f"B: {name_b}"
    rows = []
    for t in sorted(set(a["iterations"]) | set(b["iterations"])):
        for name, get in COMPARE_ROWS:
            va, vb = get(a, t), get(b, t)
            if va is None and vb is None:
                continue
            rows.append([str(t), name, fmt(va), fmt(vb)])
    lines = [f"A: {run_a} ({a['status']})", f"B: {run_b} ({b['status']})", "",
             table(["iter", "metric", name_a, name_b], rows)]
    paired = held_out_difference(Path(run_a), Path(run_b))
    if paired:
        lines += ["", "held-out reward, A − B, paired over the prompts both answered "
                  "(stderr of the per-prompt differences; win rate = share of prompts where A's mean is higher, "
                  "ties half):",
                  table(["iter", "A", "B", "A − B", "stderr", "A wins", "prompts"],
                        [[str(t), fmt(d["a"]), fmt(d["b"]), _signed(d["difference"]), fmt(d["stderr"]),
                          fmt(d["win_rate"]), str(d["prompts"])] for t, d in paired.items()])]
    return "\n".join(lines)


def _eval_means(run_dir: Path, t: int) -> dict[str, float] | None:
    got = load(run_dir, t, "eval", ["prompt_id", "mean_reward"])
    if not got or "mean_reward" not in got:
        return None
    return {str(i): float(m) if m is not None else math.nan for i, m in zip(got["prompt_id"], got["mean_reward"])}


def held_out_difference(run_a: Path, run_b: Path) -> dict[int, dict]:
    """Per iteration both runs evaluated: their mean held-out rewards over the shared prompts and
    ``paired_difference`` of A against B."""
    out = {}
    for t in sorted({t for t, _ in iteration_dirs(run_a)} & {t for t, _ in iteration_dirs(run_b)}):
        a, b = _eval_means(run_a, t), _eval_means(run_b, t)
        if a is None or b is None:
            continue
        diff = paired_difference(a, b)
        if not diff["prompts"]:
            continue
        shared = [i for i in a if i in b and math.isfinite(a[i]) and math.isfinite(b[i])]
        out[t] = {"a": mean(a[i] for i in shared), "b": mean(b[i] for i in shared), **diff}
    return out


def _signed(value) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _label(data: dict, path: Path) -> str:
    return f"{path.name} [{data['creator']}]" if data.get("creator") else path.name
