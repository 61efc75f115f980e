"""Reading a run folder: its iterations, the stages' manifests and the columns of their datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

# the order stages run in within an iteration (iter_0 has the seed pool `prompts` alone, iter_t's
# `prompts` is X_t); stages not listed follow, by finishing time
STAGE_ORDER = ["creator_samples", "creator_rewards", "scores", "selected", "evolved", "prompts",
               "solver_samples", "solver_rewards", "pairs", "rewritten", "policy", "judged", "eval"]


def iteration_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(t, iter_<t> folder)`` for every iteration folder, in order."""
    out = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        m = re.fullmatch(r"iter_(\d+)", child.name)
        if m and child.is_dir():
            out.append((int(m.group(1)), child))
    return sorted(out)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a crash can leave nothing or a torn file behind: report what is readable
    return data if isinstance(data, dict) else None


def read_manifests(run_dir: Path) -> dict[int, dict[str, dict]]:
    """``{iteration: {stage: manifest without its config}}`` for every published stage, in run order."""
    rank = {s: i for i, s in enumerate(STAGE_ORDER)}
    out: dict[int, dict[str, dict]] = {}
    for t, folder in iteration_dirs(run_dir):
        found = {}
        for stage_dir in folder.iterdir():
            if not stage_dir.is_dir() or stage_dir.name.startswith("."):
                continue  # temporary and stale folders
            manifest = read_json(stage_dir / "manifest.json")
            if manifest is not None:
                found[stage_dir.name] = {k: v for k, v in manifest.items() if k != "config"}
        order = sorted(found, key=lambda s: (rank.get(s, len(rank)), str(found[s].get("finished_at", "")), s))
        out[t] = {s: found[s] for s in order}
    return out


def load(run_dir: Path, t: int, stage: str, columns: list[str]) -> dict[str, list] | None:
    """The named columns (those present) of ``iter_<t>/<stage>``'s dataset; None when it is unreadable."""
    data = Path(run_dir) / f"iter_{t}" / stage / "data"
    if not data.is_dir():
        return None
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(data))
    except Exception:  # noqa: BLE001 - a torn artifact of a crashed run: report the rest
        return None
    return {c: ds[c] for c in columns if c in ds.column_names}
