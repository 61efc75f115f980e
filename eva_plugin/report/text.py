"""The report's text part: fixed-width tables, one section each (``text_sections``), and the
seed → evolved examples; ``text_report`` is what ``eva report`` and the end of a run print."""

from __future__ import annotations

from pathlib import Path

from eva_plugin import stage_list
from eva_plugin.report.collect import API_KEYS
from eva_plugin.report.run_folder import load


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _stage_table(costs: dict, key: str, title: str, digits: int) -> str | None:
    iterations = [t for t in costs if costs[t]]
    stages = list(dict.fromkeys(s for t in iterations for s in costs[t]))
    rows = []
    for stage in stages:
        values = [costs[t].get(stage, {}).get(key) for t in iterations]
        if all(v is None for v in values):
            continue
        rows.append([stage, *[fmt(v if v is None else float(v), digits) if digits else fmt(v) for v in values]])
    if not rows:
        return None
    totals = [sum((costs[t].get(s) or {}).get(key) or 0 for s in costs[t]) for t in iterations]
    rows.append(["total", *[fmt(float(v), digits) if digits else fmt(v) for v in totals]])
    return table([title, *[f"iter {t}" for t in iterations]], rows)


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def evolved_examples(run_dir: Path, iteration: int, k: int = 3) -> list[tuple[str, str, str]]:
    """Up to ``k`` (seed prompt, mutation, evolved prompt) triples from one iteration: one per parent,
    first evolutions first (they rewrite the seed itself), varied mutations preferred."""
    evolved = load(run_dir, iteration, "evolved", ["prompt", "parent_id", "mutation", "step", "status"])
    parents = load(run_dir, iteration, "creator_samples", ["prompt_id", "prompt"])
    if not evolved or not parents or "status" not in evolved:
        return []
    by_id = dict(zip(parents["prompt_id"], parents["prompt"]))
    rows = [dict(zip(evolved, values)) for values in zip(*evolved.values())]
    kept = sorted((r for r in rows if r["status"] == "kept" and r["parent_id"] in by_id), key=lambda r: r["step"])
    out, parents_seen, mutations_seen = [], set(), set()
    for varied in (True, False):
        for row in kept:
            if len(out) == k or row["parent_id"] in parents_seen or (varied and row["mutation"] in mutations_seen):
                continue
            parents_seen.add(row["parent_id"])
            mutations_seen.add(row["mutation"])
            out.append((by_id[row["parent_id"]], row["mutation"], row["prompt"]))
    return out


def text_sections(data: dict) -> list[tuple[str, str]]:
    """(title, fixed-width text) sections: the text part of the report."""
    sections = []
    header = [name for name, _ in stage_list.summary_columns()]
    rows = [[fmt(r[name]) for name in header] for r in data["summary"]]
    sections.append(("Iterations", table(header, rows)))
    if data["eval"]:
        rows = [[str(t), fmt(e["mean_reward"]), fmt(e["stderr"]), fmt(e["win_rate"]), fmt(e["prompts"])]
                for t, e in data["eval"].items()]
        sections.append(("Held-out evaluation",
                         table(["iter", "mean reward", "stderr", "win rate", "prompts"], rows)))
    rows = []
    for t, j in data.get("judged", {}).items():
        rows.append([str(t), "seed pool" if t == 0 else "X_t", fmt(j["mean_complexity"], 2),
                     fmt(j["stderr_complexity"], 2), fmt(j["mean_quality"], 2), fmt(j["stderr_quality"], 2),
                     fmt(j["prompts"])])
        for origin, o in sorted((j.get("by_origin") or {}).items()) if t > 0 else []:
            rows.append([str(t), f"  {origin}", fmt(o.get("complexity"), 2), "", fmt(o.get("quality"), 2), "",
                         fmt(o.get("prompts"))])
    if rows:
        header = ["iter", "prompts of", "complexity", "stderr", "quality", "stderr", "n"]
        sections.append(("Prompt complexity and quality (LLM judge, 1-5)", table(header, rows)))
    rows = []
    for t, entry in data["rewards_by_origin"].items():
        for origin, r in entry.items():
            rows.append([str(t), origin, fmt(r["pairs"]), fmt(r["chosen_mean"]), fmt(r["rejected_mean"])])
    if rows:
        header = ["iter", "origin", "pairs", "chosen r", "rejected r"]
        sections.append(("Rewards by prompt origin", table(header, rows)))
    for key, title, digits in (("seconds", "seconds", 1), ("tokens_generated", "tokens", 0)):
        costs = {t: c for t, c in data["stage_costs"].items() if t > 0 or len(data["stage_costs"]) == 1}
        stage_table = _stage_table(costs, key, title, digits)
        if stage_table:
            sections.append((f"{title.capitalize()} per stage", stage_table))
    rows = [[str(t), stage, *[fmt(u[k], 4) if k == "cost" else fmt(u[k]) for k in API_KEYS]]
            for t, stages in data.get("api_usage", {}).items() for stage, u in stages.items()]
    if rows:
        header = ["iter", "stage", "requests", "replayed", "retries", "failed", "prompt tok", "completion tok",
                  "cost"]
        sections.append(("Requests to LLM servers (replayed: answered before a rerun, from the stage's cache)",
                         table(header, rows)))
    return sections


def text_report(data: dict, run_dir: Path | None = None) -> str:
    """The run line, ``text_sections`` and, with ``run_dir``, examples of evolved prompts."""
    parts = [f"run: {data['run_dir']} ({data['status']}" + (f", creator: {data['creator']})" if data["creator"]
                                                              else ")")]
    parts += [text for _, text in text_sections(data)]
    if run_dir is not None:
        examples = evolved_examples(run_dir, 1)
        if examples:
            lines = ["examples from iteration 1 (seed → evolved):"]
            for seed, mutation, evolved in examples:
                lines.append(f"  seed:    {_short(seed)}\n  {mutation.lower()}: {_short(evolved)}\n")
            parts.append("\n".join(lines).rstrip())
    return "\n\n".join(parts)
