"""Dataset specs and the two mixture dialects a recipe may use (parsing only; no ``datasets`` import).

The one place that says how the two dialects differ:

* **Handbook** ``dataset_mixture: {datasets: [{id, config, split, columns, weight}], seed,
  test_split_size}`` (and the older ``dataset_mixer`` + ``dataset_splits``): ``weight`` is the
  share of *that dataset* kept — ``int(weight · len)`` rows after a shuffle seeded with the
  mixture's ``seed``; the mixture is then shuffled and split with the same seed.
* **TRL** ``datasets: [{path, name, data_dir, data_files, split, columns, fraction}]``
  (``DatasetMixtureConfig``): ``fraction`` is a *target share of the final mixture*,
  normalised to sum 1; the mixture is as large as it can be without repeating rows, and the
  first ``round(share · size)`` rows of each dataset are kept (no shuffle). ``fraction`` is
  set for all datasets or none (none = every row). TRL's own ``get_dataset`` does the loading
  and mixing wherever it can read every dataset; ``eva_plugin.data`` reproduces it for local
  files and ``save_to_disk`` folders, which it cannot.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_plugin.errors import RecipeError
from eva_plugin.typed import short_repr

HANDBOOK, TRL = "handbook", "trl"


@dataclass
class DatasetSpec:
    """One dataset of a mixture: a hub id / local path, its config, split, columns and share.

    ``weight`` is the Handbook's (share of this dataset kept after a seeded shuffle);
    ``fraction`` is TRL's (target share of the final mixture). At most one of them is used
    in one mixture: a spec with ``fraction`` set belongs to a TRL mixture.
    """

    path: str
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    weight: float = 1.0
    data_files: Any = None
    data_dir: str | None = None
    fraction: float | None = None

    def local_paths(self) -> list[str]:
        """The local files and folders this dataset is read from (``path``, and the files that
        ``data_files`` names or matches, e.g. ``{path: json, data_files: …}``), sorted; hub ids none."""
        found = {self.path} if Path(self.path).exists() else set()
        bases = [Path(self.path) / (self.data_dir or "")] if Path(self.path).is_dir() else []
        bases += [Path(self.data_dir)] if self.data_dir else []
        for pattern in _file_patterns(self.data_files):
            for base in [*bases, Path()]:
                matches = sorted(str(m) for m in base.glob(pattern)) if not Path(pattern).is_absolute() else \
                    sorted(glob.glob(pattern))
                if matches:
                    found.update(m for m in matches if Path(m).is_file())
                    break
        return sorted(found)


def _file_patterns(data_files: Any) -> list[str]:
    """The file names or patterns of a ``data_files`` value (a string, a list, or split → either)."""
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, list | tuple):
        return [p for item in data_files for p in _file_patterns(item)]
    if isinstance(data_files, dict):
        return [p for item in data_files.values() for p in _file_patterns(item)]
    return []


@dataclass
class Mixture:
    """The recipe's datasets, the seed for shuffles and splits, and the held-out test size."""

    datasets: list[DatasetSpec]
    seed: int = 0
    test_split_size: float | None = None
    dialect: str = HANDBOOK


_HANDBOOK_ENTRY = {"id", "path", "config", "split", "columns", "weight", "data_files", "data_dir"}
_TRL_ENTRY = {"path", "name", "data_dir", "data_files", "split", "columns", "fraction"}


def _entries(value: Any, where: str, known: set[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise RecipeError(f"`{where}` must be a list of mappings, got {short_repr(value)}")
    for d in value:
        unknown = sorted(set(d) - known)
        if unknown:
            raise RecipeError(f"unknown key(s) {', '.join(unknown)} in `{where}`; known: {', '.join(sorted(known))}")
        if not (d.get("id") or d.get("path")):
            raise RecipeError(f"every entry of `{where}` needs `{'id' if 'id' in known else 'path'}`")
        for key, problem in ((k, _entry_type_problem(k, d[k])) for k in d):
            if problem:
                raise RecipeError(f"`{where}[].{key}` {problem}")
    return value


#: The type each entry key must have (``typed.type_problem``); ``data_files`` is a string, list or mapping.
_ENTRY_TYPES = {"id": "str", "path": "str", "config": "str | None", "name": "str | None", "split": "str",
                "data_dir": "str | None", "columns": "list | None", "weight": "float | None",
                "fraction": "float | None"}


def _entry_type_problem(key: str, value: Any) -> str | None:
    from eva_plugin.typed import type_problem

    if key == "columns" and isinstance(value, list) and not all(isinstance(c, str) for c in value):
        return f"must be a list of column names, got {value!r}"
    return type_problem(_ENTRY_TYPES[key], value) if key in _ENTRY_TYPES else None


def _seed(value: Any, where: str) -> int:
    """A shuffle seed: an int in [0, 2**32 - 1] (numpy's range); null is 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**32 - 1:
        raise RecipeError(f"`{where}` must be an int in [0, 2**32 - 1], got {value!r}")
    return value


def _test_size(value: Any, where: str) -> float | int | None:
    """A held-out share in (0, 1) or a row count >= 1 (``datasets.train_test_split``'s ``test_size``)."""
    if value is None:
        return None
    fits = not isinstance(value, bool) and (isinstance(value, int) and value >= 1 or
                                            isinstance(value, float) and 0 < value < 1)
    if not fits:
        raise RecipeError(f"`{where}` must be a share in (0, 1) or a number of rows >= 1, got {value!r}")
    return value


def _share(value: Any, where: str) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"`{where}` must be a number, got {short_repr(value)}") from None
    if isinstance(value, bool) or not math.isfinite(share) or share < 0:
        raise RecipeError(f"`{where}` must be a finite number >= 0, got {short_repr(value)}")
    return share


def _handbook_mixture(mixture: Any) -> Mixture:
    if not isinstance(mixture, dict):
        raise RecipeError(f"`dataset_mixture` must be a mapping with `datasets:`, got {short_repr(mixture)}")
    entries = _entries(mixture.get("datasets") or [], "dataset_mixture.datasets", _HANDBOOK_ENTRY)
    specs = []
    for d in entries:
        weight = d.get("weight")
        weight = 1.0 if weight is None else _share(weight, "dataset_mixture.datasets[].weight")
        if weight > 1:
            raise RecipeError(f"`dataset_mixture` weight {weight} of {d.get('id') or d['path']!r} must be <= 1 "
                              "(the Handbook keeps that share of the dataset)")
        specs.append(DatasetSpec(path=d.get("id") or d["path"], config=d.get("config"), split=d.get("split", "train"),
                                 columns=d.get("columns"), weight=weight, data_files=d.get("data_files"),
                                 data_dir=d.get("data_dir")))
    return Mixture(specs, _seed(mixture.get("seed"), "dataset_mixture.seed"),
                   _test_size(mixture.get("test_split_size"), "dataset_mixture.test_split_size"), HANDBOOK)


def _trl_mixture(entries: Any) -> list[DatasetSpec]:
    entries = _entries(entries, "datasets", _TRL_ENTRY)
    given = [d.get("fraction") is not None for d in entries]
    if any(given) and not all(given):
        raise RecipeError("`datasets[].fraction` must be set for every dataset or for none (TRL's rule)")
    if any(given) and not sum(_share(d["fraction"], "datasets[].fraction") for d in entries) > 0:
        raise RecipeError("`datasets[].fraction` values must not all be 0")
    return [DatasetSpec(path=d["path"], config=d.get("name"), split=d.get("split", "train"), columns=d.get("columns"),
                        data_files=d.get("data_files"), data_dir=d.get("data_dir"),
                        fraction=None if d.get("fraction") is None else float(d["fraction"]))
            for d in entries]


def read_mixture(cfg: dict[str, Any], notes: list[str]) -> Mixture:
    """Pop the dataset keys of a recipe (either dialect, or the old ``dataset_mixer``) into a ``Mixture``."""
    test_size = _test_size(cfg.pop("test_split_size", None), "test_split_size")
    mixture = cfg.pop("dataset_mixture", None)
    mixer = cfg.pop("dataset_mixer", None)
    splits = cfg.pop("dataset_splits", None)
    configs = cfg.pop("dataset_configs", None)
    trl_list = cfg.pop("datasets", None)
    if cfg.pop("streaming", False):
        notes.append("`streaming` ignored: prompt sets are materialised")
    if sum(x is not None for x in (mixture, mixer, trl_list)) > 1:
        raise RecipeError("set one of `dataset_mixture` (Handbook), `datasets` (TRL) or `dataset_mixer` (old "
                          "Handbook), not several")
    if mixture is not None:
        result = _handbook_mixture(mixture)
        result.test_split_size = result.test_split_size if result.test_split_size is not None else test_size
        return result
    if trl_list is not None:
        return Mixture(_trl_mixture(trl_list), 0, test_size, TRL)
    specs: list[DatasetSpec] = []
    if mixer:
        if not isinstance(mixer, dict):
            raise RecipeError(f"`dataset_mixer` must map dataset ids to weights, got {short_repr(mixer)}")
        train_splits = [s for s in (splits or ["train"]) if "test" not in s] or ["train"]
        configs = configs or [None] * len(mixer)
        for (name, weight), conf in zip(mixer.items(), configs):
            for split in train_splits:
                specs.append(DatasetSpec(path=name, config=conf, split=split,
                                         weight=_share(weight, f"dataset_mixer.{name}")))
        notes.append("`dataset_mixer`/`dataset_splits` (old Handbook format) read as a mixture of train splits")
    return Mixture(specs, 0, test_size, HANDBOOK)


def dialect(specs: list[DatasetSpec]) -> str:
    """``trl`` when the specs carry TRL ``fraction`` shares, else ``handbook``."""
    return TRL if any(s.fraction is not None for s in specs) else HANDBOOK


def trl_row_counts(lengths: list[int], fractions: list[float]) -> list[int]:
    """Rows TRL keeps from each dataset: shares normalised to 1, the largest total that repeats no row."""
    total_share = sum(fractions)
    shares = [f / total_share for f in fractions]
    total = min(n / s for n, s in zip(lengths, shares) if s > 0)
    return [round(s * total) for s in shares]


def handbook_row_count(length: int, weight: float) -> int:
    """Rows the Handbook keeps from one dataset: ``int(weight · len)`` after its seeded shuffle."""
    return int(length * weight)
