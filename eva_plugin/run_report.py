"""``eva report RUN_DIR`` and ``eva compare RUN_A RUN_B``: a run's report read from its artifacts alone.

Works on any run folder, finished, stopped or crashed: every published stage
(``iter_<t>/<stage>/manifest.json``) is read, missing ones are left out. ``write_report`` writes
``RUN_DIR/report/`` with ``report.md``, a self-contained ``report.html`` (the plots embedded as
base64), the PNG plots and ``report.json`` (every plotted number). ``text_report`` is the text
part, also printed at the end of a run (``eva_plugin.report.print_summary``).

matplotlib (Agg) and datasets are imported only inside the functions that need them."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from statistics import mean, median
from typing import Any

from eva_plugin.stats import paired_difference

# the order stages run in within an iteration (iter_0 has the seed pool `prompts` alone, iter_t's
# `prompts` is X_t); stages not listed follow, by finishing time
STAGE_ORDER = ["creator_samples", "creator_rewards", "scores", "selected", "evolved", "prompts",
               "solver_samples", "solver_rewards", "pairs", "rewritten", "policy", "judged", "eval"]
EVOLVED_STATUSES = ("kept", "empty", "truncated", "unusable", "too_short", "too_long", "refusal", "duplicate",
                    "near_duplicate")
ORIGINS = ("seed", "buffer", "evolved")
HIST_BINS = 10

COLUMNS = [
    ("iter", lambda m: m["_iteration"]),
    ("scored", lambda m: m.get("creator_rewards", {}).get("rows")),
    ("mean info", lambda m: m.get("scores", {}).get("mean_info")),
    ("selected", lambda m: m.get("selected", {}).get("selected")),
    ("evolved kept/dropped", lambda m: _kept(m.get("evolved"))),
    ("prompts", lambda m: m.get("prompts", {}).get("rows")),
    ("pairs", lambda m: m.get("pairs", {}).get("pairs")),
    ("chosen r", lambda m: m.get("pairs", {}).get("mean_chosen_reward")),
    ("rejected r", lambda m: m.get("pairs", {}).get("mean_rejected_reward")),
    ("dpo loss", lambda m: m.get("policy", {}).get("train_loss")),
    ("reward acc", lambda m: m.get("policy", {}).get("reward_accuracy")),
    ("gens saved", lambda m: m.get("solver_samples", {}).get("generations_saved")),
]


# ---------------------------------------------------------------- reading the artifacts

def _iter_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        m = re.fullmatch(r"iter_(\d+)", child.name)
        if m and child.is_dir():
            out.append((int(m.group(1)), child))
    return sorted(out)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a crash can leave nothing or a torn file behind: report what is readable
    return data if isinstance(data, dict) else None


def read_manifests(run_dir: Path) -> dict[int, dict[str, dict]]:
    """``{iteration: {stage: manifest without its config}}`` for every published stage, in run order."""
    out: dict[int, dict[str, dict]] = {}
    for t, folder in _iter_dirs(run_dir):
        found = {}
        for stage_dir in folder.iterdir():
            if not stage_dir.is_dir() or stage_dir.name.startswith("."):
                continue  # temporary and stale folders
            manifest = _read_json(stage_dir / "manifest.json")
            if manifest is not None:
                found[stage_dir.name] = {k: v for k, v in manifest.items() if k != "config"}
        rank = {s: i for i, s in enumerate(STAGE_ORDER)}
        order = sorted(found, key=lambda s: (rank.get(s, len(rank)), str(found[s].get("finished_at", "")), s))
        out[t] = {s: found[s] for s in order}
    return out


def _load(folder: Path, columns: list[str]) -> dict[str, list] | None:
    """The named columns (those present) of the dataset in ``folder/data``; None when it is unreadable."""
    data = folder / "data"
    if not data.is_dir():
        return None
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(data))
    except Exception:  # noqa: BLE001 - a torn artifact of a crashed run: report the rest
        return None
    return {c: ds[c] for c in columns if c in ds.column_names}


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean(values) -> float | None:
    values = _finite(values)
    return mean(values) if values else None


# ---------------------------------------------------------------- the numbers

def _kept(evolved: dict | None) -> str | None:
    if not evolved:
        return None
    dropped = sum(evolved.get(k, 0) for k in EVOLVED_STATUSES if k != "kept")
    return f"{evolved.get('kept', 0)}/{dropped}"


def summary_rows(manifests: dict[int, dict[str, dict]]) -> list[dict[str, Any]]:
    rows = []
    for t, stages in manifests.items():
        if t == 0:
            continue
        m = {**stages, "_iteration": t}
        rows.append({name: get(m) for name, get in COLUMNS})
    return rows


def _informativeness(run_dir: Path, manifests) -> dict:
    import numpy as np

    out = {}
    for t, stages in manifests.items():
        if "scores" not in stages:
            continue
        scores = _load(run_dir / f"iter_{t}" / "scores", ["prompt_id", "info", "excluded"]) or {}
        selected = _load(run_dir / f"iter_{t}" / "selected", ["prompt_id", "info"]) or {}
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


def _rewards_by_origin(run_dir: Path, manifests) -> dict:
    out = {}
    for t, stages in manifests.items():
        if "pairs" not in stages:
            continue
        pairs = _load(run_dir / f"iter_{t}" / "pairs", ["origin", "chosen_reward", "rejected_reward"])
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


def _evolved_outcomes(manifests) -> dict:
    return {t: {s: int(stages["evolved"].get(s, 0)) for s in EVOLVED_STATUSES}
            for t, stages in manifests.items() if "evolved" in stages}


def _prompts_and_categories(run_dir: Path, manifests) -> tuple[dict, dict]:
    """Prompt length (characters, words) per X_t and origin, and X_t's category mix mapped through
    prompt ids / parent ids to the seed pool's ``category`` column (empty when it has none)."""
    lengths, categories, category_of = {}, {}, {}
    has_categories = False
    for t, stages in manifests.items():
        if "prompts" not in stages:
            continue
        rows = _load(run_dir / f"iter_{t}" / "prompts", ["prompt_id", "prompt", "origin", "parent_id", "category"])
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


EVAL_KEYS = ("mean_reward", "stderr", "win_rate", "prompts")
JUDGED_KEYS = ("prompts", "mean_complexity", "stderr_complexity", "mean_quality", "stderr_quality", "by_origin")


def _fields(manifests, stage: str, keys: tuple[str, ...]) -> dict:
    """``{iteration: {key: value}}`` of ``stage``'s manifest, for the iterations that published it."""
    return {t: {k: stages[stage].get(k) for k in keys} for t, stages in manifests.items() if stage in stages}


def _costs(manifests) -> dict:
    return {t: {s: {"seconds": m.get("seconds"), "tokens_generated": m.get("tokens_generated")}
                for s, m in stages.items()} for t, stages in manifests.items()}


def iteration_metrics(manifests: dict[int, dict[str, dict]], t: int) -> dict[str, float]:
    """Iteration ``t``'s numbers as flat ``eva/…`` scalars (for experiment trackers): the summary
    table's numeric columns (``eva/mean_info``, ``eva/pairs``, …), ``eva/evolved/<outcome>`` and
    ``eva/evolved/dropped``, ``eva/eval/<key>``, ``eva/judged/<key>``, ``eva/seconds/<stage>``,
    ``eva/tokens/<stage>`` and ``eva/tokens_generated``; what the iteration has not published is left out."""
    one = {t: manifests.get(t, {})}
    flat: dict[str, Any] = {"iteration": t}
    for row in summary_rows(one):
        flat.update({name.replace(" ", "_"): value for name, value in row.items() if name != "iter"})
    outcomes = _evolved_outcomes(one).get(t)
    if outcomes:
        flat.update({f"evolved/{outcome}": count for outcome, count in outcomes.items()})
        flat["evolved/dropped"] = sum(c for s, c in outcomes.items() if s != "kept")
    for stage, keys in (("eval", EVAL_KEYS), ("judged", JUDGED_KEYS)):  # judged's by_origin (a dict) drops out
        flat.update({f"{stage}/{k}": v for k, v in _fields(one, stage, keys).get(t, {}).items()})
    for stage, cost in _costs(one)[t].items():
        flat[f"seconds/{stage}"], flat[f"tokens/{stage}"] = cost["seconds"], cost["tokens_generated"]
    flat["tokens_generated"] = _total({"stage_costs": _costs(one)}, t, "tokens_generated")
    return {f"eva/{k}": float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _status(manifests) -> str:
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
    lengths, categories = _prompts_and_categories(run_dir, manifests)
    creator = next((m.get("creator") for t, _ in _iter_dirs(run_dir)
                    if (m := _read_json(run_dir / f"iter_{t}" / "manifest.json"))), None)
    return {
        "run_dir": str(run_dir), "creator": creator, "status": _status(manifests),
        "iterations": list(manifests),
        "summary": summary_rows(manifests),
        "informativeness": _informativeness(run_dir, manifests),
        "rewards_by_origin": _rewards_by_origin(run_dir, manifests),
        "evolved_outcomes": _evolved_outcomes(manifests),
        "prompt_length": lengths,
        "categories": categories,
        "eval": _fields(manifests, "eval", EVAL_KEYS),
        "judged": _fields(manifests, "judged", JUDGED_KEYS),
        "stage_costs": _costs(manifests),
        "manifests": manifests,
    }


# ---------------------------------------------------------------- text

def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
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
        rows.append([stage, *[_fmt(v if v is None else float(v), digits) if digits else _fmt(v) for v in values]])
    if not rows:
        return None
    totals = [sum((costs[t].get(s) or {}).get(key) or 0 for s in costs[t]) for t in iterations]
    rows.append(["total", *[_fmt(float(v), digits) if digits else _fmt(v) for v in totals]])
    return _table([title, *[f"iter {t}" for t in iterations]], rows)


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def evolved_examples(run_dir: Path, iteration: int, k: int = 3) -> list[tuple[str, str, str]]:
    """Up to ``k`` (seed prompt, mutation, evolved prompt) triples from one iteration: one per parent,
    first evolutions first (they rewrite the seed itself), varied mutations preferred."""
    folder = Path(run_dir) / f"iter_{iteration}"
    evolved = _load(folder / "evolved", ["prompt", "parent_id", "mutation", "step", "status"])
    parents = _load(folder / "creator_samples", ["prompt_id", "prompt"])
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
    header = [name for name, _ in COLUMNS]
    rows = [[_fmt(r[name]) for name in header] for r in data["summary"]]
    sections.append(("Iterations", _table(header, rows)))
    if data["eval"]:
        rows = [[str(t), _fmt(e["mean_reward"]), _fmt(e["stderr"]), _fmt(e["win_rate"]), _fmt(e["prompts"])]
                for t, e in data["eval"].items()]
        sections.append(("Held-out evaluation",
                         _table(["iter", "mean reward", "stderr", "win rate", "prompts"], rows)))
    rows = []
    for t, j in data.get("judged", {}).items():
        rows.append([str(t), "seed pool" if t == 0 else "X_t", _fmt(j["mean_complexity"], 2),
                     _fmt(j["stderr_complexity"], 2), _fmt(j["mean_quality"], 2), _fmt(j["stderr_quality"], 2),
                     _fmt(j["prompts"])])
        for origin, o in sorted((j.get("by_origin") or {}).items()) if t > 0 else []:
            rows.append([str(t), f"  {origin}", _fmt(o.get("complexity"), 2), "", _fmt(o.get("quality"), 2), "",
                         _fmt(o.get("prompts"))])
    if rows:
        header = ["iter", "prompts of", "complexity", "stderr", "quality", "stderr", "n"]
        sections.append(("Prompt complexity and quality (LLM judge, 1-5)", _table(header, rows)))
    rows = []
    for t, entry in data["rewards_by_origin"].items():
        for origin, r in entry.items():
            rows.append([str(t), origin, _fmt(r["pairs"]), _fmt(r["chosen_mean"]), _fmt(r["rejected_mean"])])
    if rows:
        header = ["iter", "origin", "pairs", "chosen r", "rejected r"]
        sections.append(("Rewards by prompt origin", _table(header, rows)))
    for key, title, digits in (("seconds", "seconds", 1), ("tokens_generated", "tokens", 0)):
        table = _stage_table({t: c for t, c in data["stage_costs"].items() if t > 0 or len(data["stage_costs"]) == 1},
                             key, title, digits)
        if table:
            sections.append((f"{title.capitalize()} per stage", table))
    return sections


def text_report(data: dict, run_dir: Path | None = None) -> str:
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


# ---------------------------------------------------------------- plots

def _plots(data: dict, folder: Path) -> list[tuple[str, str]]:
    """Write the PNGs into ``folder``; (file name, caption) for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name, caption):
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        written.append((name, caption))

    info = {t: e for t, e in data["informativeness"].items() if e.get("bins")}
    if info:
        fig, axes = plt.subplots(1, len(info), figsize=(4 * len(info), 3), squeeze=False)
        for ax, (t, e) in zip(axes[0], info.items()):
            edges = e["bins"]
            widths = [b - a for a, b in zip(edges, edges[1:])]
            ax.bar(edges[:-1], e["counts"], width=widths, align="edge", color="#bbbbbb", label="scored")
            ax.bar(edges[:-1], e["selected_counts"], width=widths, align="edge", color="#d62728", label="selected")
            ax.set_title(f"iter {t}: informativeness")
            ax.set_xlabel("info")
            ax.legend(fontsize=7)
        save(fig, "informativeness.png", "Informativeness per iteration (selected subset in red)")

    rewards = data["rewards_by_origin"]
    if rewards:
        labels, chosen, rejected = [], [], []
        for t, entry in rewards.items():
            for origin, r in entry.items():
                if origin == "all" and len(entry) > 1:
                    continue
                labels.append(f"{t}:{origin}")
                chosen.append(r["chosen_mean"] or 0.0)
                rejected.append(r["rejected_mean"] or 0.0)
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(labels)), 3))
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], chosen, width=0.4, label="chosen")
        ax.bar([i + 0.2 for i in x], rejected, width=0.4, label="rejected")
        ax.set_xticks(list(x), labels, rotation=30, fontsize=7)
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=7)
        save(fig, "rewards_by_origin.png", "Chosen vs rejected reward by prompt origin (iteration:origin)")

    def stacked(its, series: dict[str, list[float]], xlabel, ylabel, name, caption):
        fig, ax = plt.subplots(figsize=(5, 3))
        bottom = [0.0] * len(its)
        for label, values in series.items():
            ax.bar([str(t) for t in its], values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        finish(fig, ax, xlabel, ylabel, name, caption)

    def finish(fig, ax, xlabel, ylabel, name, caption):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        save(fig, name, caption)

    outcomes = data["evolved_outcomes"]
    if outcomes:
        its = list(outcomes)
        series = {s: [outcomes[t][s] for t in its] for s in EVOLVED_STATUSES}
        stacked(its, {s: v for s, v in series.items() if any(v)}, "iteration", "evolved prompts",
                "evolved_outcomes.png", "Evolved-prompt outcomes by reason")

    lengths = data["prompt_length"]
    if lengths:
        fig, ax = plt.subplots(figsize=(5, 3))
        its = list(lengths)
        ax.plot(its, [lengths[t]["mean_chars"] for t in its], marker="o", label="all", color="black")
        for origin in ORIGINS:
            pts = [(t, lengths[t]["by_origin"][origin]["mean_chars"]) for t in its if origin in lengths[t]["by_origin"]]
            if pts:
                ax.plot(*zip(*pts), marker=".", linestyle="--", label=origin)
        finish(fig, ax, "iteration (0: seed pool)", "mean prompt length (chars)", "prompt_length.png",
               "Prompt length drift across iterations")

    categories = data["categories"]
    if categories:
        its = list(categories)
        names = list(dict.fromkeys(c for t in its for c in categories[t]))
        stacked(its, {n: [categories[t].get(n, 0) / max(1, sum(categories[t].values())) for t in its] for n in names},
                "iteration (0: seed pool)", "share of prompts", "categories.png", "Category mix of X_t")

    evals = data["eval"]
    if evals:
        fig, ax = plt.subplots(figsize=(5, 3))
        its = list(evals)
        ax.errorbar(its, [evals[t]["mean_reward"] for t in its],
                    yerr=[evals[t]["stderr"] or 0 for t in its], marker="o", label="mean reward")
        ax.set_xlabel("iteration (0: initial policy)")
        ax.set_ylabel("held-out mean reward")
        ax2 = ax.twinx()
        ax2.plot(its, [evals[t]["win_rate"] for t in its], marker="s", color="#d62728", label="win rate")
        ax2.set_ylabel("win rate vs initial")
        ax2.set_ylim(0, 1)
        ax.set_xticks(its)  # whole iterations
        handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, ["mean reward ± stderr", "win rate vs initial"], fontsize=7, loc="lower right")
        save(fig, "eval.png", "Held-out reward and win rate by iteration")

    costs = {t: c for t, c in data["stage_costs"].items() if c}
    if costs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        its = list(costs)
        stages = list(dict.fromkeys(s for t in its for s in costs[t]))
        width = 0.8 / max(1, len(its))
        for ax, key, label in ((axes[0], "seconds", "seconds"), (axes[1], "tokens_generated", "tokens generated")):
            for k, t in enumerate(its):
                ax.bar([i + k * width for i in range(len(stages))],
                       [(costs[t].get(s) or {}).get(key) or 0 for s in stages], width=width, label=f"iter {t}")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(stages))], stages, rotation=45, ha="right",
                          fontsize=7)
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        save(fig, "stage_costs.png", "Seconds and tokens per stage")
    return written


# ---------------------------------------------------------------- files

def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(run_dir: Path, out: Path | None = None, data: dict | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``report.json`` and the PNGs (``data``: ``collect(run_dir)``,
    read when not given); the report folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from eva_plugin.errors import EvaError

        raise EvaError(f"{run_dir} is not a folder")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(run_dir) if data is None else data
    plots = _plots(data, out)
    data["plots"] = [name for name, _ in plots]
    (out / "report.json").write_text(json.dumps(_jsonable(data), indent=1, ensure_ascii=False) + "\n")

    text = text_report(data, run_dir)
    md = [f"# EVA run report: {run_dir.name}", "", f"`{run_dir}`: {data['status']}", "", "```", text, "```", ""]
    md += [f"## {caption}\n\n![{caption}]({name})\n" for name, caption in plots]
    (out / "report.md").write_text("\n".join(md))

    body = [f"<h1>EVA run report: {html.escape(run_dir.name)}</h1>",
            f"<p><code>{html.escape(str(run_dir))}</code>: {html.escape(data['status'])}</p>",
            f"<pre>{html.escape(text)}</pre>"]
    for name, caption in plots:
        encoded = base64.b64encode((out / name).read_bytes()).decode("ascii")
        body.append(f"<h2>{html.escape(caption)}</h2>\n<img alt=\"{html.escape(caption)}\" "
                    f"src=\"data:image/png;base64,{encoded}\">")
    (out / "report.html").write_text(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>EVA run report</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}img{max-width:100%}</style>"
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return out


# ---------------------------------------------------------------- compare

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
    ("seconds", lambda d, t: _total(d, t, "seconds")),
    ("tokens", lambda d, t: _total(d, t, "tokens_generated")),
]


def _row(data: dict, t: int) -> dict:
    return next((r for r in data["summary"] if r["iter"] == t), {})


def _total(data: dict, t: int, key: str):
    stages = data["stage_costs"].get(t)
    if not stages:
        return None
    values = [m.get(key) for m in stages.values() if m.get(key) is not None]
    return sum(values) if values else None


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
            rows.append([str(t), name, _fmt(va), _fmt(vb)])
    lines = [f"A: {run_a} ({a['status']})", f"B: {run_b} ({b['status']})", "",
             _table(["iter", "metric", name_a, name_b], rows)]
    paired = held_out_difference(Path(run_a), Path(run_b))
    if paired:
        lines += ["", "held-out reward, A − B, paired over the prompts both answered "
                  "(stderr of the per-prompt differences; win rate = share of prompts where A's mean is higher, "
                  "ties half):",
                  _table(["iter", "A", "B", "A − B", "stderr", "A wins", "prompts"],
                         [[str(t), _fmt(d["a"]), _fmt(d["b"]), _signed(d["difference"]), _fmt(d["stderr"]),
                           _fmt(d["win_rate"]), str(d["prompts"])] for t, d in paired.items()])]
    return "\n".join(lines)


def _eval_means(run_dir: Path, t: int) -> dict[str, float] | None:
    got = _load(run_dir / f"iter_{t}" / "eval", ["prompt_id", "mean_reward"])
    if not got or "mean_reward" not in got:
        return None
    return {str(i): float(m) if m is not None else math.nan for i, m in zip(got["prompt_id"], got["mean_reward"])}


def held_out_difference(run_a: Path, run_b: Path) -> dict[int, dict]:
    """Per iteration both runs evaluated: their mean held-out rewards over the shared prompts and
    ``paired_difference`` of A against B."""
    out = {}
    for t in sorted({t for t, _ in _iter_dirs(run_a)} & {t for t, _ in _iter_dirs(run_b)}):
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
