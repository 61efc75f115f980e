"""Where a run may write: ``output_dir`` checked before any model loads.

A run writes, renames and sets aside folders under ``output_dir``, so it must be a folder this
process can create and write, and never one that holds something else: the filesystem root,
the home folder, a project's root, the run's own data, or (for an EVA run) files that are not
a run folder's. ``RUN_ENTRIES`` are the names a run folder holds at its top.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from eva_plugin.errors import RecipeError

RUN_ENTRIES = re.compile(r"^(iter_\d+|runs|report)$")
"""A run folder's top level: the iterations, TensorBoard's ``runs/`` and ``eva report``'s ``report/``
(hidden entries are the run's lock, temporary and set-aside folders)."""

PROJECT_MARKERS = (".git", "pyproject.toml", "setup.py")


def check_output_dir(output_dir: str | None, *, data: Iterable[str | os.PathLike] = (), eva_run: bool = True) -> None:
    """Refuse an ``output_dir`` a run cannot or must not write, in one line that says why.

    ``data`` are the local inputs the run reads (prompt files, dataset folders): the run's folder
    may hold none of them. A plain DPO round (``eva_run`` false) writes its checkpoint into the
    folder as TRL does, so only an EVA run insists on a folder that holds nothing but a run.
    """
    if not output_dir:
        raise RecipeError("recipe has no `output_dir`; set it to the run's folder")
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise RecipeError(f"`output_dir` {output_dir} is a file; point it at a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise RecipeError(f"`output_dir` {output_dir} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecipeError(f"`output_dir` {output_dir} is not writable ({probe} denies it); pick another folder")
    here = path.resolve()
    why = _reserved(here)
    if why is None:
        why = _holds_data(here, data)
    if why is None and eva_run and here.is_dir():
        why = _foreign(here)
    if why is not None:
        raise RecipeError(f"`output_dir` {output_dir} {why}; point it at a new folder for this run")


def _reserved(path: Path) -> str | None:
    if path == Path(path.anchor):
        return "is the filesystem root"
    if path == Path.home().resolve():
        return "is the home folder"
    markers = [m for m in PROJECT_MARKERS if (path / m).exists()]
    if markers:
        return f"is a project's root (it holds {', '.join(markers)})"
    return None


def _holds_data(path: Path, data: Iterable[str | os.PathLike]) -> str | None:
    for item in data:
        source = Path(item).expanduser()
        if not source.exists():
            continue  # a hub id or a server name
        source = source.resolve()
        if source == path or path in source.parents:
            return f"holds the run's data ({item})"
    return None


def _foreign(path: Path) -> str | None:
    foreign = sorted(e.name for e in path.iterdir() if not e.name.startswith(".") and not RUN_ENTRIES.match(e.name))
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return f"holds files that are not an EVA run's ({shown})"
