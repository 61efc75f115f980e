"""Prompt sets and preference datasets (Hugging Face ``datasets``, chat format)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk

from eva_plugin.errors import RecipeError
from eva_plugin.recipe import DatasetSpec

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
CHAT_COLUMNS = ("messages", "chosen", "conversations", "conversation")
TEXT_COLUMNS = ("prompt", "instruction", "question", "query")


def load_spec(spec: DatasetSpec) -> Dataset:
    """One dataset of a mixture: a ``save_to_disk`` folder, a local data file, or a hub/cached id."""
    path = Path(spec.path)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds[spec.split] if spec.split in ds else ds[next(iter(ds))]
    elif path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise RecipeError(f"cannot read {path}: use one of {', '.join(FILE_BUILDERS)} or a save_to_disk folder")
        ds = load_dataset(builder, data_files=str(path), split="train")
    else:
        try:
            ds = load_dataset(spec.path, spec.config, split=spec.split, data_files=spec.data_files)
        except Exception as err:  # datasets raises many types for "not found / offline"
            raise RecipeError(
                f"cannot load dataset {spec.path!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "point the recipe at a local file or save_to_disk folder"
            ) from None
    if spec.columns:
        missing = [c for c in spec.columns if c not in ds.column_names]
        if missing:
            raise RecipeError(f"dataset {spec.path!r} has no column(s) {missing}; it has {ds.column_names}")
        ds = ds.select_columns(spec.columns)
    return ds


def prompt_text(row: dict[str, Any], column: str | None = None) -> str | None:
    """The prompt of one row: a text column, or the first user turn of a chat column."""
    columns = [column] if column else [*TEXT_COLUMNS, *CHAT_COLUMNS]
    for name in columns:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list):
            for turn in value:
                if isinstance(turn, dict) and turn.get("role") == "user" and str(turn.get("content", "")).strip():
                    return str(turn["content"]).strip()
    return None


def prompt_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_prompts(specs: list[DatasetSpec], column: str | None = None, seed: int = 0) -> Dataset:
    """Seed prompts from every dataset of the mixture: ``prompt_id``, ``prompt``, ``source`` (+ ``category``).

    Each dataset keeps ``round(weight * len)`` rows after a seeded shuffle (the
    Handbook's meaning of ``weight``); duplicate prompts are dropped.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        ds = load_spec(spec)
        if spec.weight < 1.0:
            ds = ds.shuffle(seed=seed).select(range(round(spec.weight * len(ds))))
        for row in ds:
            text = prompt_text(row, column)
            if text is None or text in seen:
                continue
            seen.add(text)
            rows.append({"prompt_id": prompt_id(text), "prompt": text, "source": spec.path,
                         "category": str(row.get("category") or "")})
    if not rows:
        where = column or f"one of {', '.join(TEXT_COLUMNS + CHAT_COLUMNS)}"
        raise RecipeError(f"no prompts found in the recipe's datasets; set `eva.prompt_column` (looked at {where})")
    return Dataset.from_list(rows)


def load_preferences(specs: list[DatasetSpec], seed: int = 0) -> Dataset:
    """The recipe's preference datasets concatenated (plain DPO round, like the Handbook)."""
    parts = []
    for spec in specs:
        ds = load_spec(spec)
        if spec.weight < 1.0:
            ds = ds.shuffle(seed=seed).select(range(round(spec.weight * len(ds))))
        parts.append(ds)
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
