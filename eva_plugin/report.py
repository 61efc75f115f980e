"""The end-of-run table: one row per iteration, read from the stage manifests."""

from __future__ import annotations

COLUMNS = [
    ("iter", lambda m: m["_iteration"]),
    ("scored", lambda m: m.get("creator_rewards", {}).get("rows")),
    ("info", lambda m: _fmt(m.get("scores", {}).get("mean_info"))),
    ("selected", lambda m: m.get("selected", {}).get("selected")),
    ("evolved kept/dropped", lambda m: _kept(m.get("evolved"))),
    ("prompts", lambda m: m.get("prompts", {}).get("rows")),
    ("pairs", lambda m: m.get("pairs", {}).get("pairs")),
    ("chosen r", lambda m: _fmt(m.get("pairs", {}).get("mean_chosen_reward"))),
    ("rejected r", lambda m: _fmt(m.get("pairs", {}).get("mean_rejected_reward"))),
    ("loss", lambda m: _fmt(m.get("policy", {}).get("train_loss"))),
    ("acc", lambda m: _fmt(m.get("policy", {}).get("reward_accuracy"))),
    ("saved gens", lambda m: m.get("solver_samples", {}).get("generations_saved")),
    ("seconds", lambda m: _fmt(sum(s.get("seconds", 0) for k, s in m.items() if isinstance(s, dict)), 1)),
]


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kept(evolved: dict | None) -> str:
    if not evolved:
        return "-"
    return f"{evolved.get('kept', 0)}/{evolved.get('empty', 0) + evolved.get('duplicate', 0)}"


def summary_rows(reports) -> list[list[str]]:
    rows = []
    for report in reports:
        if report.iteration == 0:
            continue
        manifests = {k: v or {} for k, v in report.manifests.items()}
        manifests["_iteration"] = report.iteration
        rows.append(["-" if (v := get(manifests)) is None else str(v) for _, get in COLUMNS])
    return rows


def print_summary(reports) -> None:
    header = [name for name, _ in COLUMNS]
    rows = summary_rows(reports)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
