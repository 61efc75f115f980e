"""The report's numbers: ``collect(run_dir)`` reads them from a run folder's manifests and datasets
(JSON-safe, iterations as keys); one function per part of the report."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean, median
from typing import Any

from eva_plugin import stage_list
from eva_plugin.generation import USAGE_KEYS
from eva_plugin.report.run_folder import iteration_dirs, load, read_json, read_manifests

HIST_BINS = 10
EVAL_KEYS = ("mean_reward", "stderr", "win_rate", "prompts")
JUDGED_KEYS = ("prompts", "mean_complexity", "stderr_complexity", "mean_quality", "stderr_quality", "by_origin")


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean(values) -> float | None:
    values = _finite(values)
    return mean(values) if values else None


def summary_rows(manifests: dict[int, dict[str, dict]]) -> list[dict[str, Any]]:
    """The summary table (``stage_list.summary_columns()``), one row per iteration after 0."""
    columns = stage_list.summary_columns()
    rows = []
    for t, stages in manifests.items():
        if t == 0:
            continue
        m = {**stages, "_iteration": t}
        rows.append({name: get(m) for name, get in columns})
    return rows


def informativeness(run_dir: Path, manifests) -> dict:
    import numpy as np

    out = {}
    for t, stages in manifests.items():
        if "scores" not in stages:
            continue
        scores = load(run_dir, t, "scores", ["prompt_id", "info", "excluded"]) or {}
        selected = load(run_dir, t, "selected", ["prompt_id", "info"]) or {}
        info = _finite(scores.get("info", []))
        chosen = _finite(selected.get("info", []))
        entry = {"mean_info": stages["scores"].get("mean_info"), "values": info, "selected_values": chosen,
                 "scored": len(info), "selected": stages.get("selected", {}).get("selected")}
        if info:
            counts, edges = np.histogram(info, bins=HIST_BINS)
            sel_counts, _ = np.histogram(chosen, bins=edges)
            entry.update(bins=[float(e) for e in edges], counts=[int(c) for c in counts],
                         selected_counts=[int(c) for c in sel_counts])
        out[t] = entry
    return out


def rewards_by_origin(run_dir: Path, manifests) -> dict:
    out = {}
    for t, stages in manifests.items():
        if "pairs" not in stages:
            continue
        pairs = load(run_dir, t, "pairs", ["origin", "chosen_reward", "rejected_reward"])
        entry: dict[str, Any] = {"all": {"pairs": stages["pairs"].get("pairs"),
                                         "chosen_mean": stages["pairs"].get("mean_chosen_reward"),
                                         "rejected_mean": stages["pairs"].get("mean_rejected_reward")}}
        if pairs and "chosen_reward" in pairs:
            origins = pairs.get("origin") or ["all"] * len(pairs["chosen_reward"])
            for origin in dict.fromkeys(origins):
                idx = [i for i, o in enumerate(origins) if o == origin]
                if origin == "all":
                    continue
                entry[origin] = {"pairs": len(idx),
                                 "chosen_mean": _mean(pairs["chosen_reward"][i] for i in idx),
                                 "rejected_mean": _mean(pairs["rejected_reward"][i] for i in idx)}
        out[t] = entry
    return out


def evolved_outcomes(manifests) -> dict:
    return {t: {s: int(stages["evolved"].get(s, 0)) for s in stage_list.EVOLVED_STATUSES}
            for t, stages in manifests.items() if "evolved" in stages}


def prompts_and_categories(run_dir: Path, manifests) -> tuple[dict, dict]:
    """Prompt length (characters, words) of the seed pool and of each X_t, per origin, and X_t's
    category mix mapped through prompt ids / parent ids to the seed pool's ``category`` column
    (empty when it has none)."""
    lengths, categories, category_of = {}, {}, {}
    has_categories = False
    for t, stages in manifests.items():
        stage = "seed_pool" if t == 0 else "prompts"
        if stage not in stages:
            continue
        rows = load(run_dir, t, stage, ["prompt_id", "prompt", "origin", "parent_id", "category"])
        if not rows or "prompt" not in rows:
            continue
        n = len(rows["prompt"])
        ids = rows.get("prompt_id", [None] * n)
        origins = rows.get("origin") or (["seed"] * n if t == 0 else ["all"] * n)
        by_origin: dict[str, list[str]] = {}
        for prompt, origin in zip(rows["prompt"], origins):
            by_origin.setdefault(origin, []).append(prompt or "")
        entry = {"prompts": n, **_length(rows["prompt"]),
                 "by_origin": {o: {"prompts": len(p), **_length(p)} for o, p in by_origin.items()}}
        lengths[t] = entry
        if t == 0:
            cats = rows.get("category") or [""] * n
            has_categories = "category" in rows and any(cats)
            category_of.update(zip(ids, cats))
            counts: dict[str, int] = {}
            for c in cats:
                counts[c or "(none)"] = counts.get(c or "(none)", 0) + 1
            categories[t] = counts
            continue
        parents = rows.get("parent_id", [None] * n)
        counts = {}
        for pid, parent in zip(ids, parents):
            cat = category_of.get(pid) or category_of.get(parent) or ""
            if pid is not None:
                category_of.setdefault(pid, cat)
            label = cat or ("(none)" if (pid in category_of or parent in category_of) else "(unknown)")
            counts[label] = counts.get(label, 0) + 1
        categories[t] = counts
    return lengths, (categories if has_categories else {})


def _length(prompts) -> dict:
    chars = [len(p or "") for p in prompts]
    words = [len((p or "").split()) for p in prompts]
    if not chars:
        return {"mean_chars": None, "median_chars": None, "mean_words": None}
    return {"mean_chars": mean(chars), "median_chars": median(chars), "mean_words": mean(words)}


def fields(manifests, stage: str, keys: tuple[str, ...]) -> dict:
    """``{iteration: {key: value}}`` of ``stage``'s manifest, for the iterations that published it."""
    return {t: {k: stages[stage].get(k) for k in keys} for t, stages in manifests.items() if stage in stages}


def costs(manifests) -> dict:
    return {t: {s: {"seconds": m.get("seconds"), "tokens_generated": m.get("tokens_generated")}
                for s, m in stages.items()} for t, stages in manifests.items()}


#: What a stage that asked an LLM server counted (``generation.Generations.usage``), in the report's order.
API_KEYS = (*USAGE_KEYS, "cost")


def api_usage(manifests) -> dict:
    """``{iteration: {stage: {requests, …, cost}}}`` for the stages that asked an LLM server (their manifest
    counts ``requests``); ``cost`` is None when no price was set."""
    return {t: {s: {k: m.get(k) for k in API_KEYS} for s, m in stages.items() if "requests" in m}
            for t, stages in manifests.items() if any("requests" in m for m in stages.values())}


def stage_total(data: dict, t: int, key: str):
    """Iteration ``t``'s ``seconds`` or ``tokens_generated`` summed over its stages (None: none known)."""
    stages = data["stage_costs"].get(t)
    if not stages:
        return None
    values = [m.get(key) for m in stages.values() if m.get(key) is not None]
    return sum(values) if values else None


def status(manifests) -> str:
    if not manifests:
        return "empty: no published stage"
    last_t = max(manifests)
    stages = manifests[last_t]
    if last_t > 0 and "policy" in stages:
        return f"finished iteration {last_t}"
    last = list(stages)[-1] if stages else None
    where = f"iter_{last_t}/{last}" if last else f"iter_{last_t} (no stage)"
    return f"stopped or crashed: the last published stage is {where}"


def collect(run_dir: Path) -> dict:
    """Every number the report shows, read from the run's artifacts (JSON-safe, iterations as keys)."""
    run_dir = Path(run_dir)
    manifests = read_manifests(run_dir)
    lengths, categories = prompts_and_categories(run_dir, manifests)
    creator = next((m.get("creator") for t, _ in iteration_dirs(run_dir)
                    if (m := read_json(run_dir / f"iter_{t}" / "manifest.json"))), None)
    return {
        "run_dir": str(run_dir), "creator": creator, "status": status(manifests),
        "iterations": list(manifests),
        "summary": summary_rows(manifests),
        "informativeness": informativeness(run_dir, manifests),
        "rewards_by_origin": rewards_by_origin(run_dir, manifests),
        "evolved_outcomes": evolved_outcomes(manifests),
        "prompt_length": lengths,
        "categories": categories,
        "eval": fields(manifests, "eval", EVAL_KEYS),
        "judged": fields(manifests, "judged", JUDGED_KEYS),
        "stage_costs": costs(manifests),
        "api_usage": api_usage(manifests),
        "manifests": manifests,
    }
