"""Reading a run folder: its iterations, the stages' manifests and the columns of their datasets.

Iteration 0's seed pool is ``iter_0/seed_pool``; older runs wrote it as ``iter_0/prompts``
(``stage_list.LEGACY_NAMES``), read here under its current name. In later iterations ``prompts`` is X_t."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eva_plugin import stage_list


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


def stage_folder(run_dir: Path, t: int, stage: str) -> Path:
    """``iter_<t>/<stage>``, or its older name in iteration 0 when only that exists."""
    folder = Path(run_dir) / f"iter_{t}" / stage
    if t == 0 and not folder.is_dir():
        for legacy, name in stage_list.LEGACY_NAMES.items():
            if name == stage and (Path(run_dir) / "iter_0" / legacy).is_dir():
                return Path(run_dir) / "iter_0" / legacy
    return folder


def read_manifests(run_dir: Path) -> dict[int, dict[str, dict]]:
    """``{iteration: {stage: manifest without its config}}`` for every published stage, in run order
    (``stage_list.ORDER``; stages it does not list follow, by finishing time)."""
    rank = {s: i for i, s in enumerate(stage_list.ORDER)}
    out: dict[int, dict[str, dict]] = {}
    for t, folder in iteration_dirs(run_dir):
        found = {}
        for stage_dir in folder.iterdir():
            if not stage_dir.is_dir() or stage_dir.name.startswith("."):
                continue  # temporary and stale folders
            manifest = read_json(stage_dir / "manifest.json")
            if manifest is not None:
                found[stage_dir.name] = {k: v for k, v in manifest.items() if k != "config"}
        for legacy, name in stage_list.LEGACY_NAMES.items() if t == 0 else ():
            if legacy in found:  # an old run folder (the current name wins if both are there)
                found.setdefault(name, found.pop(legacy))
        order = sorted(found, key=lambda s: (rank.get(s, len(rank)), str(found[s].get("finished_at", "")), s))
        out[t] = {s: found[s] for s in order}
    return out


def load(run_dir: Path, t: int, stage: str, columns: list[str]) -> dict[str, list] | None:
    """The named columns (those present) of ``iter_<t>/<stage>``'s dataset; None when it is unreadable."""
    data = stage_folder(run_dir, t, stage) / "data"
    if not data.is_dir():
        return None
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(data))
    except Exception:  # noqa: BLE001 - a torn artifact of a crashed run: report the rest
        return None
    return {c: ds[c] for c in columns if c in ds.column_names}
