"""Prompt sets and preference datasets (Hugging Face ``datasets``, chat format).

Mixtures follow the recipe's dialect (see ``eva_plugin.dataset_mixture``): TRL's ``get_dataset``
loads and mixes a TRL ``datasets:`` list whenever it can read every entry; local files and
``save_to_disk`` folders, which it cannot read, are loaded here and mixed with the same rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk

from eva_plugin.dataset_mixture import HANDBOOK, TRL, DatasetSpec, dialect, handbook_row_count, trl_row_counts
from eva_plugin.errors import RecipeError

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
CHAT_COLUMNS = ("messages", "chosen", "conversations", "conversation")
TEXT_COLUMNS = ("prompt", "instruction", "question", "query")

__all__ = ["DatasetSpec", "load_spec", "mixture_parts", "load_mixture", "load_prompts", "load_preferences",
           "prompt_text", "prompt_id", "user_turn"]


def local_kind(spec: DatasetSpec) -> str | None:
    """``disk`` (a ``save_to_disk`` folder), ``file`` (one local data file), or None (``load_dataset`` reads it)."""
    path = Path(spec.path)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return "disk"
    return "file" if path.is_file() else None


def load_spec(spec: DatasetSpec) -> Dataset:
    """One dataset of a mixture: a ``save_to_disk`` folder, a local data file, or what ``load_dataset`` reads."""
    kind = local_kind(spec)
    if kind == "disk":
        ds = load_from_disk(spec.path)
        if isinstance(ds, DatasetDict):
            if spec.split not in ds:
                raise RecipeError(f"dataset {spec.path} has no split {spec.split!r}; its splits are "
                                  f"{', '.join(ds)}: set `split` to one of them")
            ds = ds[spec.split]
    elif kind == "file":
        if spec.split.split("[", 1)[0] != "train":
            raise RecipeError(f"dataset {spec.path} is one data file, read as the split 'train'; it has no split "
                              f"{spec.split!r}: set `split: train` (or save the splits with save_to_disk)")
        builder = FILE_BUILDERS.get(Path(spec.path).suffix.lower())
        if builder is None:
            raise RecipeError(f"cannot read {spec.path}: use one of {', '.join(FILE_BUILDERS)} or a save_to_disk "
                              "folder")
        _check_not_empty(spec.path)
        if builder in ("json", "csv"):
            _check_utf8(spec.path, builder)
        try:
            with _reader_errors_reported_here():
                ds = load_dataset(builder, data_files=spec.path, split="train")
        except Exception as err:  # datasets wraps the reader's error; find the real cause
            raise RecipeError(_diagnose_file(spec.path, builder, err)) from None
    else:
        try:
            ds = load_dataset(spec.path, spec.config, data_dir=spec.data_dir, data_files=spec.data_files,
                              split=spec.split)
        except Exception as err:  # datasets raises many types for "not found / offline"
            raise RecipeError(_unreadable(spec, err)) from None
    return _select_columns(ds, spec)


class _DropReaderError(logging.Filter):
    """Drops the JSON reader's own error log ("Failed to load JSON from file …")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load JSON from file")


@contextlib.contextmanager
def _reader_errors_reported_here() -> Iterator[None]:
    """Hold back the JSON reader's error log while a local file loads: ``_diagnose_file`` reports the same
    fault as one line naming the file's line."""
    reader, drop = logging.getLogger("datasets.packaged_modules.json.json"), _DropReaderError()
    reader.addFilter(drop)
    try:
        yield
    finally:
        reader.removeFilter(drop)


def _check_not_empty(path: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise RecipeError(f"data file {path} is empty (no rows); fill it or drop it from the recipe")


def _check_utf8(path: str, builder: str) -> None:
    """Text data must be UTF-8 (Arrow would take other bytes in and fail when the rows are read)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise RecipeError(_diagnose_file(path, builder, err)) from None


def _diagnose_file(path: str, builder: str, err: Exception) -> str:
    """One line naming what is wrong with a local data file that ``load_dataset`` could not read:
    bytes that are not UTF-8, a JSONL line that is not a JSON object (with its line number), …"""
    if builder in ("json", "csv"):
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return (f"data file {path} is not UTF-8 text: line {number}, byte {bad.start + 1} "
                            f"({raw[bad.start:bad.start + 1]!r}); save it as UTF-8")
                if builder == "json" and Path(path).suffix.lower() == ".jsonl" and line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as bad:
                        return f"data file {path}: line {number} is not valid JSON ({bad.msg}, column {bad.colno})"
                    if not isinstance(row, dict):
                        return f"data file {path}: line {number} is not a JSON object (one row per line)"
    if builder == "json" and Path(path).suffix.lower() == ".json":
        try:
            with open(path, encoding="utf-8") as fh:
                json.load(fh)
        except json.JSONDecodeError as bad:
            if "Extra data" in bad.msg:
                return (f"data file {path}: line {bad.lineno} holds a second JSON value; use one JSON "
                        "array/object or name the file .jsonl (one object per line)")
            return f"data file {path}: line {bad.lineno} is not valid JSON ({bad.msg}, column {bad.colno})"
    cause = err.__cause__ or err.__context__ or err
    text = str(cause).splitlines()[0][:200] if str(cause) else ""
    return f"cannot read data file {path} as {builder} ({type(cause).__name__}: {text})"


def _unreadable(spec: DatasetSpec, err: Exception) -> str:
    return (f"cannot load dataset {spec.path!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "point the recipe at a local file or save_to_disk folder")


def _select_columns(ds: Dataset, spec: DatasetSpec) -> Dataset:
    if not spec.columns:
        return ds
    missing = [c for c in spec.columns if c not in ds.column_names]
    if missing:
        raise RecipeError(f"dataset {spec.path!r} has no column(s) {missing}; it has {ds.column_names}")
    return ds.select_columns(spec.columns)


def _trl_get_dataset(specs: list[DatasetSpec]) -> Dataset:
    """TRL's own loading and mixing (``trl.get_dataset``), for specs that ``load_dataset`` reads."""
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig

    configs = [DatasetConfig(path=s.path, name=s.config, data_dir=s.data_dir, data_files=s.data_files,
                             split=s.split, columns=s.columns, fraction=s.fraction) for s in specs]
    try:
        return get_dataset(DatasetMixtureConfig(datasets=configs))["train"]
    except ValueError as err:
        if "column" in str(err).lower():
            raise RecipeError(f"datasets: {str(err).splitlines()[0]}") from None
        raise
    except Exception as err:  # not found / offline
        raise RecipeError(_unreadable(specs[0], err)) from None


def mixture_parts(specs: list[DatasetSpec], seed: int = 0, *, mixture_dialect: str | None = None) -> list[Dataset]:
    """The rows each dataset contributes to the mixture, in the recipe's order (before any final shuffle).

    Handbook: ``int(weight · len)`` rows after a shuffle seeded with ``seed``. TRL: the first
    rows by ``fraction`` share of the final mixture (every row without fractions), through
    TRL's ``get_dataset`` where it can read every dataset.
    """
    mixture_dialect = mixture_dialect or dialect(specs)
    if mixture_dialect == HANDBOOK:
        parts = []
        for spec in specs:
            ds = load_spec(spec)
            if spec.weight != 1.0:  # the Handbook shuffles whenever a weight is given; 1.0 keeps the same rows
                ds = ds.shuffle(seed=seed).select(range(handbook_row_count(len(ds), spec.weight)))
            parts.append(ds)
        return parts
    if mixture_dialect != TRL:
        raise ValueError(f"unknown mixture dialect {mixture_dialect!r}")
    if not specs:
        return []
    parts = [load_spec(s) for s in specs]
    counts = [len(p) for p in parts]
    if any(s.fraction is not None for s in specs):
        counts = trl_row_counts(counts, [float(s.fraction or 0.0) for s in specs])
    if all(local_kind(s) is None for s in specs):
        mixed = _trl_get_dataset(specs)
        if len(mixed) != sum(counts):
            raise RuntimeError(f"TRL's mixture has {len(mixed)} rows; expected {sum(counts)}")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        return [mixed.select(range(start, start + n)) for start, n in zip(starts, counts)]
    return [p.select(range(n)) for p, n in zip(parts, counts)]


def load_mixture(specs: list[DatasetSpec], seed: int = 0, *, mixture_dialect: str | None = None) -> Dataset:
    """The recipe's datasets mixed as its dialect says: Handbook = parts shuffled with ``seed``; TRL = concatenated."""
    mixture_dialect = mixture_dialect or dialect(specs)
    mixed = _concatenate(mixture_parts(specs, seed, mixture_dialect=mixture_dialect))
    return mixed.shuffle(seed=seed) if mixture_dialect == HANDBOOK else mixed


def _concatenate(parts: list[Dataset]) -> Dataset:
    if not parts:
        raise RecipeError("recipe names no data: set `dataset_mixture`, `datasets`, `dataset_name` or `eva.prompts`")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def prompt_text(row: dict[str, Any], column: str | None = None) -> str | None:
    """The prompt of one row: a text column, or the first user turn of a chat column."""
    columns = [column] if column else [*TEXT_COLUMNS, *CHAT_COLUMNS]
    for name in columns:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list):
            for turn in value:
                if isinstance(turn, dict) and turn.get("role") == "user" and content_text(turn.get("content")):
                    return content_text(turn["content"])
    return None


def content_text(content: Any) -> str:
    """A chat turn's ``content`` as text: a string, or the text parts of a list of parts
    (``[{"type": "text", "text": …}, {"type": "image", …}]``, OpenAI / transformers style) joined by
    new lines; anything else (an image alone, a number) is no text ("")."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        texts = [part if isinstance(part, str) else part.get("text") if isinstance(part, dict)
                 and part.get("type", "text") == "text" else None for part in content]
        return "\n".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
    return ""


def prompt_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def load_prompts(specs: list[DatasetSpec], column: str | None = None, seed: int = 0,
                 counts: dict[str, int] | None = None, *, dataset_column: bool = False) -> Dataset:
    """Seed prompts from the mixture: ``prompt_id``, ``prompt``, ``source`` (+ ``category``; with
    ``dataset_column`` also ``dataset``, the position of the row's dataset in ``specs``).

    The rows are the mixture's (``mixture_parts``), in the sources' order; duplicate
    prompts are dropped (the first dataset that has one keeps it), counted (one log line) in
    ``counts["duplicates_dropped"]``.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    tally = {"duplicates_dropped": 0, "rows_without_prompt": 0}
    parts = mixture_parts(specs, seed)
    for index, (spec, part) in enumerate(zip(specs, parts)):
        start = len(rows)
        _add_prompts(rows, seen, part, spec.path, column, tally)
        if dataset_column:
            for row in rows[start:]:
                row["dataset"] = index
    if not rows and sum(len(p) for p in parts) == 0:
        zero = [s.path for s in specs if s.weight == 0 or s.fraction == 0]
        why = f" (weight 0: {', '.join(zero)})" if zero else ""
        raise RecipeError(f"the recipe's dataset mixture selects no rows{why}; give a dataset a weight > 0")
    if tally["duplicates_dropped"]:
        logger.warning("seed prompts: %d duplicate prompt(s) dropped (%d kept)", tally["duplicates_dropped"], len(rows))
    if tally["rows_without_prompt"] and rows:
        where = column or f"one of {', '.join(TEXT_COLUMNS + CHAT_COLUMNS)}"
        logger.warning("seed prompts: %d row(s) without a usable prompt dropped (no non-empty %s; %d kept)",
                       tally["rows_without_prompt"], where, len(rows))
    if counts is not None:
        counts.update(tally)
    return _prompt_set(rows, column)


def _add_prompts(rows: list[dict[str, Any]], seen: set[str], ds: Dataset, source: str, column: str | None,
                 tally: dict[str, int] | None = None) -> None:
    tally = tally if tally is not None else {"duplicates_dropped": 0, "rows_without_prompt": 0}
    for row in ds:
        text = prompt_text(row, column)
        if text is None:
            tally["rows_without_prompt"] += 1
            continue
        if text in seen:
            tally["duplicates_dropped"] += 1
            continue
        seen.add(text)
        rows.append({"prompt_id": prompt_id(text), "prompt": text, "source": source,
                     "category": str(row.get("category") or "")})


def _prompt_set(rows: list[dict[str, Any]], column: str | None) -> Dataset:
    if not rows:
        where = column or f"one of {', '.join(TEXT_COLUMNS + CHAT_COLUMNS)}"
        raise RecipeError(f"no prompts found in the recipe's datasets (no row has a non-empty prompt); set "
                          f"`eva.prompt_column` (looked at {where})")
    return Dataset.from_list(rows)


def load_preferences(specs: list[DatasetSpec], seed: int = 0, *, mixture_dialect: str | None = None) -> Dataset:
    """The recipe's preference datasets mixed like the Handbook's / TRL's ``get_dataset`` (plain DPO round)."""
    return load_mixture(specs, seed, mixture_dialect=mixture_dialect)


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
