"""End-of-run report read from the stage manifests: a table per iteration, seconds per
stage, and example seed → evolved prompts."""

from __future__ import annotations

from pathlib import Path

from eva_plugin.creator.evolved import STATUSES

COLUMNS = [
    ("iter", lambda m: m["_iteration"]),
    ("scored", lambda m: m.get("creator_rewards", {}).get("rows")),
    ("mean info", lambda m: _fmt(m.get("scores", {}).get("mean_info"))),
    ("selected", lambda m: m.get("selected", {}).get("selected")),
    ("evolved kept/dropped", lambda m: _kept(m.get("evolved"))),
    ("prompts", lambda m: m.get("prompts", {}).get("rows")),
    ("pairs", lambda m: m.get("pairs", {}).get("pairs")),
    ("chosen r", lambda m: _fmt(m.get("pairs", {}).get("mean_chosen_reward"))),
    ("rejected r", lambda m: _fmt(m.get("pairs", {}).get("mean_rejected_reward"))),
    ("dpo loss", lambda m: _fmt(m.get("policy", {}).get("train_loss"))),
    ("reward acc", lambda m: _fmt(m.get("policy", {}).get("reward_accuracy"))),
    ("gens saved", lambda m: m.get("solver_samples", {}).get("generations_saved")),
]


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kept(evolved: dict | None) -> str:
    if not evolved:
        return "-"
    dropped = sum(evolved.get(k, 0) for k in STATUSES if k != "kept")
    return f"{evolved.get('kept', 0)}/{dropped}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _manifests(report) -> dict:
    manifests = {k: v or {} for k, v in report.manifests.items()}
    manifests["_iteration"] = report.iteration
    return manifests


def summary_rows(reports) -> list[list[str]]:
    rows = []
    for report in reports:
        if report.iteration == 0:
            continue
        manifests = _manifests(report)
        rows.append(["-" if (v := get(manifests)) is None else str(v) for _, get in COLUMNS])
    return rows


def seconds_table(reports) -> str:
    iterations = [r for r in reports if r.iteration > 0]
    stages = list(dict.fromkeys(s for r in iterations for s in r.manifests))
    rows = []
    for stage in stages:
        cells = [_fmt((r.manifests.get(stage) or {}).get("seconds"), 1) for r in iterations]
        rows.append([stage, *cells])
    totals = [sum((m or {}).get("seconds", 0) for m in r.manifests.values()) for r in iterations]
    rows.append(["total", *[_fmt(t, 1) for t in totals]])
    return _table(["seconds", *[f"iter {r.iteration}" for r in iterations]], rows)


def evolved_examples(output_dir: Path, iteration: int, k: int = 3) -> list[tuple[str, str, str]]:
    """Up to ``k`` (seed prompt, mutation, evolved prompt) triples from one iteration: one per parent,
    first evolutions first (they rewrite the seed itself), varied mutations preferred."""
    from datasets import load_from_disk

    folder = Path(output_dir) / f"iter_{iteration}"
    if not (folder / "evolved" / "data").exists():
        return []
    evolved = load_from_disk(str(folder / "evolved" / "data"))
    parents = load_from_disk(str(folder / "creator_samples" / "data"))
    by_id = dict(zip(parents["prompt_id"], parents["prompt"]))
    kept = sorted((r for r in evolved if r["status"] == "kept" and r["parent_id"] in by_id),
                  key=lambda r: r["step"])
    out, parents_seen, mutations_seen = [], set(), set()
    for varied in (True, False):
        for row in kept:
            if len(out) == k or row["parent_id"] in parents_seen or (varied and row["mutation"] in mutations_seen):
                continue
            parents_seen.add(row["parent_id"])
            mutations_seen.add(row["mutation"])
            out.append((by_id[row["parent_id"]], row["mutation"], row["prompt"]))
    return out


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_summary(reports, output_dir: Path | None = None) -> None:
    header = [name for name, _ in COLUMNS]
    print("\n" + _table(header, summary_rows(reports)))
    print("\n" + seconds_table(reports))
    if output_dir is None:
        return
    examples = evolved_examples(output_dir, 1)
    if examples:
        print("\nexamples from iteration 1 (seed → evolved):")
        for seed, mutation, evolved in examples:
            print(f"  seed:    {_short(seed)}\n  {mutation.lower()}: {_short(evolved)}\n")
    print(f"artifacts: {output_dir}")
