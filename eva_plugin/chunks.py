"""The finished chunks of a long shared stage (sampling, scoring), kept so a rerun resumes inside it.

While a ``SHARED`` stage runs, each process works through its share of a call's items (``Shards.share``)
``size`` items at a time and writes every finished chunk atomically into
``iter_<t>/.<stage>.chunks-<stage fingerprint>/``: a changed stage config never meets old chunks.
A chunk file is named by its call — ``sample`` or ``score`` and the fingerprint of the call's whole
item list (prompts, seeds, sampling; or prompts and responses) — and holds the item indices it
covers, their results and the counters of the work. A rerun of the stage loads every chunk of the
same call, whichever process (of however many) wrote it, and shares out only the items left. The
result equals an uninterrupted run's: an item's result depends on the item alone (per-prompt seeds,
``generation.seeding``). ``StageStore`` removes the folder once the stage is published.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eva_plugin import progress
from eva_plugin.atomic import write_atomic

logger = logging.getLogger(__name__)

#: The counter a chunked share adds to its work's counters: chunk files this process wrote.
WRITTEN = "_chunks_written"
ShardWork = Callable[[list[int]], tuple[list[Any], dict[str, int]]]


def folder_name(stage: str, stage_fingerprint: str) -> str:
    """The chunk folder of ``stage`` run under ``stage_fingerprint``, beside the stage folders."""
    return f".{stage}.chunks-{stage_fingerprint}"


_FOLDER = re.compile(r"^\.(\w+)\.chunks-(\w+)$")


def parse_folder_name(name: str) -> tuple[str, str] | None:
    """``(stage, stage fingerprint)`` of a ``folder_name``; None for any other name."""
    match = _FOLDER.match(name)
    return (match[1], match[2]) if match else None


@dataclass
class Reused:
    """What finished chunks of a call hold: results by item index, their counters, how many chunks."""

    results: dict[int, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    chunks: int = 0

    def signature(self) -> tuple[int, int, int]:
        """Compared across processes: they must have read the same chunks."""
        return self.chunks, len(self.results), hash(tuple(sorted(self.results)))


@dataclass
class ChunkTally:
    """The chunk numbers of one stage for its manifest."""

    size: int
    used: bool = False  # a sampling or scoring call ran with chunks
    written: int = 0
    reused: int = 0
    prompts_reused: int = 0
    tokens_reused: int = 0
    responses_reused: int = 0
    kinds: set[str] = field(default_factory=set)

    def stats(self) -> dict[str, int]:
        """``chunk_size``, ``chunks_written``, ``chunks_reused``, ``prompts_reused`` (summed over the stage's
        calls: the held-out evaluation samples and scores), and what the reused chunks saved:
        ``tokens_reused`` (sampling), ``responses_reused`` (scoring); the rates leave those out."""
        if not self.used:
            return {}
        stats = {"chunk_size": self.size, "chunks_written": self.written, "chunks_reused": self.reused,
                 "prompts_reused": self.prompts_reused}
        if "sample" in self.kinds:
            stats["tokens_reused"] = self.tokens_reused
        if "score" in self.kinds:
            stats["responses_reused"] = self.responses_reused
        return stats


class StageChunks:
    """The chunk folder of one stage run, shared by every process; ``size`` items per chunk."""

    def __init__(self, folder: Path, size: int) -> None:
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        self.folder, self.size = Path(folder), int(size)
        self.tally = ChunkTally(self.size)

    def call(self, kind: str, key: str) -> ChunkedCall:
        """One call of the stage (``kind``: ``sample`` or ``score``) over the item list fingerprinted ``key``."""
        self.tally.used = True
        self.tally.kinds.add(kind)
        return ChunkedCall(self, kind, key)


class ChunkedCall:
    """The chunks of one call: which exist, loading them, and working through a share chunk by chunk."""

    def __init__(self, chunks: StageChunks, kind: str, key: str) -> None:
        self.chunks, self.kind, self.key = chunks, kind, key
        self.reused = Reused()

    @property
    def folder(self) -> Path:
        return self.chunks.folder

    @property
    def prefix(self) -> str:
        return f"{self.kind}-{self.key}-"

    def names(self) -> list[str]:
        """The chunk files of this call, sorted (read on the main process; the others get its list)."""
        try:
            return sorted(p.name for p in self.folder.glob(f"{self.prefix}*.json") if p.is_file())
        except OSError as err:
            logger.warning("cannot list the finished chunks in %s (%s); the stage starts from its beginning",
                           self.folder, err)
            return []

    def load(self, names: list[str], n: int) -> Reused:
        """The results of the chunk files ``names`` for a list of ``n`` items. A file that is unreadable or
        does not fit the list (indices out of range or already covered) is left out, with a warning."""
        reused = Reused()
        for name in names:
            chunk = _read_chunk(self.folder / name, n)
            if chunk is None or any(i in reused.results for i in chunk["indices"]):
                logger.warning("%s does not fit this stage's items; it is not reused", self.folder / name)
                continue
            reused.results.update(zip(chunk["indices"], chunk["results"]))
            for counter, value in chunk["counts"].items():
                reused.counts[counter] = reused.counts.get(counter, 0) + value
            reused.chunks += 1
        self.reused = reused
        tally = self.chunks.tally
        tally.reused += reused.chunks
        tally.prompts_reused += len(reused.results)
        if self.kind == "sample":
            tally.tokens_reused += int(reused.counts.get("num_tokens", 0))
        else:
            tally.responses_reused += sum(len(r) for r in reused.results.values())
        return reused

    def run(self, work: ShardWork, indices: list[int], write: bool) -> tuple[list[Any], dict[str, int]]:
        """``work`` over ``indices``, ``size`` at a time, each finished chunk written (``write``: this process
        keeps what it computes; the other ranks of one engine compute the same and write nothing). The
        counters are summed, plus ``WRITTEN``; progress bars span the whole share."""
        results: list[Any] = []
        totals: dict[str, int] = {WRITTEN: 0}
        size = self.chunks.size
        with progress.span(len(indices)) as span:
            for start in range(0, len(indices), size):
                piece = indices[start:start + size]
                span.part(len(piece))
                out, counts = work(piece)
                if len(out) != len(piece):
                    raise RuntimeError(f"work on {len(piece)} items returned {len(out)} results")
                if write:
                    self.write(piece, out, counts)
                    totals[WRITTEN] += 1
                results += out
                for counter, value in counts.items():
                    totals[counter] = totals.get(counter, 0) + value
        return results, totals

    def note_written(self, count: int) -> None:
        """``count`` chunk files were written for this call, by all processes together."""
        self.chunks.tally.written += count

    def write(self, indices: list[int], results: list[Any], counts: dict[str, int]) -> Path:
        """One finished chunk, written under a temporary name, fsynced and renamed into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{self.prefix}{indices[0]}-{uuid.uuid4().hex[:8]}.json"
        # NaN and ±inf stay as they are (a reward model may give them); floats round-trip exactly
        write_atomic(final, lambda fh: json.dump({"indices": indices, "results": results, "counts": counts}, fh,
                                                 allow_nan=True))
        return final


def _read_chunk(path: Path, n: int) -> dict | None:
    """A chunk file's content when it is well formed for a list of ``n`` items, else None."""
    try:
        with open(path) as fh:
            chunk = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(chunk, dict):
        return None
    indices, results, counts = chunk.get("indices"), chunk.get("results"), chunk.get("counts")
    if not (isinstance(indices, list) and isinstance(results, list) and isinstance(counts, dict)):
        return None
    if len(indices) != len(results) or len(set(indices)) != len(indices):
        return None
    if not all(isinstance(i, int) and 0 <= i < n for i in indices):
        return None
    if not all(isinstance(v, int | float) for v in counts.values()):
        return None
    return chunk
