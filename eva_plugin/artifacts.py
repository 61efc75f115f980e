"""Stage artifacts on disk: ``<output_dir>/iter_<t>/<stage>/`` written atomically, with manifests.

Each stage folder holds a Hugging Face dataset (``save_to_disk``) or a checkpoint and
a ``manifest.json`` (fingerprint, counts, seconds, tokens). A folder exists only once
complete: it is written under a temporary name and renamed into place. A sampling or scoring
stage keeps its finished chunks beside it while it runs (``chunk_folder``, ``eva_plugin.chunks``);
they outlive a killed run and go once the stage is published, or when it runs under another config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from eva_plugin.atomic import write_atomic
from eva_plugin.chunks import folder_name, parse_folder_name
from eva_plugin.content import hash_file
from eva_plugin.errors import StaleArtifactError

MANIFEST = "manifest.json"
logger = logging.getLogger("eva_plugin")


def fingerprint(payload: Any) -> str:
    """A short stable hash of JSON-serialisable configuration."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN / ±inf (nested in dicts, lists, tuples) replaced by None: strict JSON."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return float(value) if math.isfinite(value) else None
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite floats become null) under a temporary name, fsync, rename."""
    write_atomic(path, lambda fh: json.dump(finite_or_none(data), fh, indent=2, sort_keys=True, default=str,
                                            allow_nan=False))


def read_json(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


@dataclass
class StageResult:
    """What a stage function returns: a dataset (or None for checkpoint stages) and its stats."""

    data: Dataset | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # what the progress line says instead of "N rows"


def stale_name(final: Path) -> Path:
    """Where an old ``final`` is kept aside: unique even for several in one second."""
    return final.with_name(f".{final.name}.stale-{int(time.time())}-{uuid.uuid4().hex[:8]}")


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place (a stale one is kept aside, never deleted)."""
    if final.exists():
        final.rename(stale_name(final))
    os.replace(tmp, final)


def remove_leftovers(root: Path) -> list[Path]:
    """Remove the temporary stage folders and JSON files that killed runs left (call under the run lock).

    Only names this project creates are touched: ``iter_<t>/.<stage>.tmp-*`` for a known stage,
    ``.<name>.json.*.tmp`` beside the manifests, and the chunk folder of a stage that was published
    under the same fingerprint (``.<stage>.chunks-<fingerprint>``; the chunks of an unfinished stage
    stay for the rerun); anything else in the folder stays, the request caches
    (``iter_<t>/.<stage>.requests``, ``StageStore.requests_dir``) above all: they are what a rerun replays."""
    from eva_plugin.stage_list import LEGACY_NAMES, ORDER

    stages = "|".join(re.escape(name) for name in (*ORDER, *LEGACY_NAMES))
    stage_tmp, json_tmp = re.compile(rf"^\.(?:{stages})\.tmp-\w+$"), re.compile(r"^\.\w+\.json\.\w+\.tmp$")
    removed = []
    folders = [Path(root), *(d for d in Path(root).glob("iter_*") if ITERATION.match(d.name) and d.is_dir())]
    for folder in folders:
        for stage in [folder, *(d for d in folder.iterdir() if d.is_dir() and d.name in ORDER)]:
            for leftover in stage.glob(".*"):
                made_here = json_tmp.match(leftover.name) or (stage is folder and (
                    stage_tmp.match(leftover.name) or _published_chunks(folder, leftover.name)))
                if not made_here:
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


ITERATION = re.compile(r"^iter_\d+$")


def _published_chunks(folder: Path, name: str) -> bool:
    """Whether ``name`` in the iteration folder ``folder`` is the chunk folder of a stage published since
    with the same fingerprint (a run killed between publishing and removing it)."""
    parsed = parse_folder_name(name)
    if parsed is None:
        return False
    stage, stage_fingerprint = parsed
    try:
        manifest = read_json(folder / stage / MANIFEST)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("fingerprint") == stage_fingerprint


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote (relative name → hash), its manifest aside: the manifest
    records them, and a reuse checks them (``damaged``)."""
    return {f.relative_to(folder).as_posix(): hash_file(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.relative_to(folder).as_posix() != MANIFEST}


def damaged(folder: Path, manifest: dict) -> str:
    """What differs from the files the manifest recorded (a truncated weight or arrow file, one
    edited or removed); "" when all are as written, or the manifest predates the record."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return ""
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if hash_file(path) != digest:
            return f"{name} changed"
    return ""


def has_content(folder: Path) -> bool:
    """A stage folder holds its artifact: a complete ``save_to_disk`` dataset or checkpoint weights."""
    data = folder / "data"
    if data.is_dir():
        try:
            state = read_json(data / "state.json")
        except (OSError, ValueError):
            return False
        files = [f.get("filename") for f in state.get("_data_files", [])]
        return (data / "dataset_info.json").exists() and all(f and (data / f).exists() for f in files)
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(read_json(index).get("weight_map", {}).values())
        except (OSError, ValueError):
            return False
        return bool(shards) and all((folder / s).exists() for s in shards)
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin"), *folder.glob("adapter_model.*")]
    return any(w.stat().st_size > 0 for w in weights)


class StageStore:
    """Runs stages once: skips a finished stage whose fingerprint matches, refuses a stale one."""

    def __init__(self, root: Path, overwrite_stale: bool = False) -> None:
        self.root = Path(root)
        self.overwrite_stale = overwrite_stale
        self.skipped: list[str] = []

    def path(self, iteration: int, stage: str) -> Path:
        return self.root / f"iter_{iteration}" / stage

    def chunk_folder(self, iteration: int, stage: str, config: dict[str, Any]) -> Path:
        """Where a run of ``stage`` under ``config`` keeps its finished chunks (``eva_plugin.chunks``)."""
        return self.root / f"iter_{iteration}" / folder_name(stage, fingerprint(config))

    def remove_chunks(self, iteration: int, stage: str, keep: str | None = None) -> None:
        """Remove the chunk folders of ``stage`` (all, or all but the one of fingerprint ``keep``)."""
        for folder in self.path(iteration, stage).parent.glob(folder_name(stage, "*")):
            if keep is None or folder.name != folder_name(stage, keep):
                shutil.rmtree(folder, ignore_errors=True)

    def requests_dir(self, iteration: int, stage: str) -> Path:
        """Where a stage keeps the answers of a paid server (``generation.request_cache``): beside its folder,
        not in its temporary one, so a rerun after a kill or a failure replays them."""
        return self.root / f"iter_{iteration}" / f".{stage}.requests"

    def load(self, iteration: int, stage: str, keep_in_memory: bool = False) -> Dataset:
        """The dataset a finished stage wrote."""
        return load_from_disk(str(self.path(iteration, stage) / "data"), keep_in_memory=keep_in_memory)

    def rename_legacy(self, iteration: int) -> list[str]:
        """Move this iteration's stage folders written under an older name (``stage_list.LEGACY_NAMES``,
        all of iteration 0) to the name they have now; returns the names moved."""
        from eva_plugin.stage_list import LEGACY_NAMES

        moved = []
        for old, new in LEGACY_NAMES.items() if iteration == 0 else ():
            if self.path(iteration, old).is_dir() and not self.path(iteration, new).exists():
                self.path(iteration, old).rename(self.path(iteration, new))
                moved.append(f"iter_{iteration}/{old} → {new}")
        return moved

    def manifest(self, iteration: int, stage: str) -> dict | None:
        """The stage's manifest; None when there is none or it is no JSON object (not finished)."""
        file = self.path(iteration, stage) / MANIFEST
        try:
            data = read_json(file) if file.exists() else None
        except (ValueError, OSError):  # unreadable: not finished
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, iteration: int, stage: str, config: dict[str, Any]) -> bool:
        """True when the stage finished with this config; a different config raises unless overwriting.

        Finished means a manifest *and* the artifact (dataset or weights): a folder without its
        content is incomplete and rebuilt (the old one kept aside)."""
        manifest = self.manifest(iteration, stage)
        if manifest is None or not has_content(self.path(iteration, stage)):
            return False
        if manifest.get("fingerprint") in (fingerprint(config), fingerprint(_with_old_keys(stage, config))):
            damage = damaged(self.path(iteration, stage), manifest)
            if damage:
                logger.warning("iter_%d/%s: %s since it finished; rebuilding it (the old folder is kept aside)",
                               iteration, stage, damage)
            return not damage
        where = self.path(iteration, stage).relative_to(self.root)
        changed = _changed_keys(manifest.get("config", {}), config)
        if not self.overwrite_stale:
            raise StaleArtifactError(
                f"{where} was made with a different config (changed: {changed}); revert the change, "
                "use a new output_dir, or rerun with --overwrite_stale to rebuild from there "
                "(old artifacts are kept aside)"
            )
        return False

    def make(
        self,
        iteration: int,
        stage: str,
        config: dict[str, Any],
        fn: Callable[[Path], StageResult],
        log: Callable[[str], None] = print,
    ) -> tuple[Dataset | None, dict]:
        """Run ``fn(tmp_dir)`` unless the stage is already done with this ``config``.

        ``fn`` may write files (a checkpoint) into the temporary folder it is given;
        a returned dataset is saved there too. Returns the dataset and the manifest.
        """
        fp = fingerprint(config)
        final = self.path(iteration, stage)
        if self.is_done(iteration, stage, config):
            self.skipped.append(f"iter_{iteration}/{stage}")
            manifest = self.manifest(iteration, stage) or {}
            self.remove_chunks(iteration, stage)
            log(f"[iter {iteration}] {stage}: done before, skipped")
            return (self.load(iteration, stage) if (final / "data").exists() else None), manifest
        log(f"[iter {iteration}] {stage}: running")
        final.parent.mkdir(parents=True, exist_ok=True)
        for leftover in final.parent.glob(f".{stage}.tmp-*"):  # from a run that was killed mid-stage
            shutil.rmtree(leftover, ignore_errors=True)
        self.remove_chunks(iteration, stage, keep=fp)  # those of another config can never be reused
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{stage}.tmp-"))
        started = time.perf_counter()
        try:
            result = fn(tmp)
            if result.data is not None:
                result.data.save_to_disk(str(tmp / "data"))
            files = file_hashes(tmp)
            manifest = {
                "stage": stage,
                "iteration": iteration,
                "fingerprint": fp,
                "config": config,
                "rows": len(result.data) if result.data is not None else None,
                "seconds": round(seconds := time.perf_counter() - started, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **result.stats,
                **rates(result.stats, seconds),
                "files": files,
            }
            write_json_atomic(tmp / MANIFEST, manifest)
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise  # finished chunks stay for the rerun
        self.remove_chunks(iteration, stage)
        rows = manifest["rows"] if manifest["rows"] is not None else "-"
        log(f"[iter {iteration}] {stage}: {result.note or f'{rows} rows'} in {manifest['seconds']:.1f}s")
        data = self.load(iteration, stage) if result.data is not None else None
        return data, manifest


#: Throughput in a manifest: rate name → the counter it divides by the stage's seconds, and the part of
#: that counter taken from finished chunks of an earlier run (not work of these seconds).
RATES = {"tokens_per_second": ("tokens_generated", "tokens_reused"), "responses_per_second": ("scored",
                                                                                             "responses_reused")}


def _with_old_keys(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` under the key names runs made before a rename used (``stage_list.CONFIG_RENAMES``)."""
    from eva_plugin.stage_list import CONFIG_RENAMES

    renames = CONFIG_RENAMES.get(stage, {})
    return {renames.get(key, key): value for key, value in config.items()}


def rates(stats: dict[str, Any], seconds: float) -> dict[str, float]:
    """Tokens generated / responses scored per second, for the stages that count them (what reused
    chunks held is not counted: it took no time now)."""
    if seconds <= 0:
        return {}
    out = {}
    for rate, (counter, reused) in RATES.items():
        value = stats.get(counter)
        if isinstance(value, int | float):
            done = value - (stats.get(reused) if isinstance(stats.get(reused), int | float) else 0)
            if done > 0:
                out[rate] = round(done / seconds, 1)
    return out


def _changed_keys(old: dict, new: dict) -> str:
    """Dotted names of the config keys that differ; none means an upstream stage changed."""

    def walk(a: dict, b: dict, prefix: str) -> list[str]:
        keys = []
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                keys += walk(x, y, f"{prefix}{key}.")
            elif x != y:
                keys.append(f"{prefix}{key}")
        return keys

    return ", ".join(walk(old, new, "")) or "upstream artifacts"
