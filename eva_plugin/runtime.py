"""Running one stage once per output dir, on one process or across an ``accelerate launch``.

A stage is made through ``StageStore.make``: a finished stage with the same fingerprint is
skipped, a changed one is refused (or rebuilt with ``--overwrite_stale``), a new one is
written in a temporary folder and renamed into place. With several processes:

- ``MAIN`` stages (bookkeeping: scores, selection, mixing, pairs) run on the main process;
  the others learn the outcome and read the artifact back;
- ``SHARED`` stages (sampling, scoring, evolving) run on every process, which split their
  items through ``eva_plugin.sharding``; the main process writes the artifact. Their sampling and
  scoring keep finished chunks (``chunk_size`` items per process, ``eva_plugin.chunks``) that a
  rerun after a crash reuses;
- ``EVERY`` stages (training) run on every process as they are (DDP, ZeRO); the main
  process writes the artifact.

``--stop_after`` ends the run right after a named stage (``StopAfterStage``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from eva_plugin.artifacts import MANIFEST, StageResult, StageStore, write_json_atomic
from eva_plugin.chunks import StageChunks
from eva_plugin.errors import EvaError, StopAfterStage
from eva_plugin.sharding import Shards, announced

MAIN, SHARED, EVERY = "main", "shared", "every"
StageWork = Callable[[Path], StageResult]


class OnDemand:
    """Build an object on first use; ``close()`` releases it (models before training)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build, self._obj = build, None

    def get(self) -> Any:
        if self._obj is None:
            self._obj = self._build()
        return self._obj

    def close(self) -> None:
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def pause(self) -> None:
        """Release a generation backend for a model that needs the room; it keeps what it can for its
        next use (``Backend.pause``)."""
        if self._obj is not None:
            self._obj.pause()
            self._obj = None


@dataclass
class IterationReport:
    """The manifests of one iteration's stages, in the order they ran."""

    iteration: int
    manifests: dict[str, dict] = field(default_factory=dict)


class StageRuntime:
    """Runs stages through a ``StageStore`` on every process of the launch and records their manifests."""

    def __init__(self, store: StageStore, state, *, log: Callable[[str], None] = print,
                 stop_after: str | None = None, timeout: timedelta | None = None,
                 chunk_size: int | None = None) -> None:
        self.store, self.state, self.log, self.stop_after = store, state, log, stop_after
        self.shards = Shards(state, timeout)  # every wait of a process for the others is on its group
        self.reports: list[IterationReport] = []
        self.chunk_size = chunk_size  # items per chunk of a shared stage's sampling and scoring; None: no chunks
        #: the chunks of the shared stage running now (``Iteration.sample`` / ``score`` use them)
        self.chunks: StageChunks | None = None

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def begin(self, iteration: int) -> None:
        self.reports.append(IterationReport(iteration))

    def run_stage(self, iteration: int, name: str, config: dict, work: StageWork, mode: str = MAIN) -> Any:
        """Run one stage (unless done) and return its dataset (None for a checkpoint) on every process."""
        chunks = StageChunks(self.store.chunk_folder(iteration, name, config), self.chunk_size) \
            if mode == SHARED and self.chunk_size else None
        if self.state.num_processes == 1:
            data, manifest = self.store.make(iteration, name, config, self._counted(work, mode, chunks=chunks),
                                             log=self.log)
        elif mode == MAIN:
            data, manifest = self._on_main_only(iteration, name, config, work)
        else:
            data, manifest = self._on_every_process(iteration, name, config, work, mode, chunks)
        self.reports[-1].manifests[name] = manifest
        self._maybe_stop(iteration, name)
        return data

    def _counted(self, work: StageWork, mode: str, finished: list[bool] | None = None,
                 chunks: StageChunks | None = None) -> StageWork:
        """``work``, noting that it finished and (shared stages) how many items each process took and
        what its chunks saved; ``chunks`` is the stage's while it runs."""

        def counted(tmp: Path) -> StageResult:
            self.shards.reset_counts()
            cuda = _cuda()
            if cuda is not None:
                cuda.reset_peak_memory_stats()
            self.chunks = chunks
            try:
                result = work(tmp)
            finally:
                self.chunks = None
            cuda = _cuda()  # the stage may have been the first to use the GPU
            if cuda is not None:  # this process's peak while the stage ran
                result.stats["max_memory_allocated"] = cuda.max_memory_allocated()
            if mode == SHARED:
                result.stats["items_per_process"] = list(self.shards.items)
            if chunks is not None:
                result.stats.update(chunks.tally.stats())
            if finished is not None:
                finished[0] = True
            return result

        return counted

    def _on_main_only(self, iteration: int, name: str, config: dict, work: StageWork) -> tuple[Any, dict]:
        done = self.on_main(lambda: self.store.is_done(iteration, name, config), share=True)
        held: list = [None]

        def run_and_keep() -> None:
            held[0] = self.store.make(iteration, name, config, work, log=self.log)

        self.on_main(run_and_keep if self.is_main else (lambda: None))
        return held[0] if self.is_main else self._read_back(iteration, name, done)

    def _on_every_process(self, iteration: int, name: str, config: dict, work: StageWork,
                          mode: str, chunks: StageChunks | None = None) -> tuple[Any, dict]:
        """Every process runs ``work``; the main process publishes.

        A failure that every process already knows about (raised after a shared gather, or
        after ``work`` finished, when no collective is left) meets the others at the outcome
        broadcast; any other failure leaves at once — the others may still wait in a gather,
        and the launcher stops them when this process exits, rather than every process
        waiting for the collective timeout.
        """
        done = self.on_main(lambda: self.store.is_done(iteration, name, config), share=True)
        finished = [False]
        counted = self._counted(work, mode, finished, chunks)
        outcome, error = None, None
        try:
            if self.is_main:
                outcome = self.store.make(iteration, name, config, counted, log=self.log)
            elif not done:
                with tempfile.TemporaryDirectory() as scratch:  # the main process publishes
                    counted(Path(scratch))
        except Exception as err:
            if not (announced(err) or finished[0]):
                raise
            error = err
        status = self.shards.broadcast(("ok", None) if error is None else _failure(error))
        if error is not None:
            raise error
        _raise_main_failure(*status)
        return outcome if self.is_main else self._read_back(iteration, name, done)

    def _read_back(self, iteration: int, name: str, done: bool) -> tuple[Any, dict]:
        """On a non-main process: the artifact the main process wrote (or had written before)."""
        if done:
            self.store.skipped.append(f"iter_{iteration}/{name}")
        has_data = (self.store.path(iteration, name) / "data").exists()
        return (self.store.load(iteration, name) if has_data else None), self.store.manifest(iteration, name) or {}

    def _maybe_stop(self, iteration: int, name: str) -> None:
        """Stop after ``name`` if asked (``STAGE`` = its first run in iteration >= 1, or ``iter_T/STAGE``);
        a stage skipped as already done never stops the run, so rerunning the command moves on."""
        where = f"iter_{iteration}/{name}"
        asked = self.stop_after == where or (self.stop_after == name and iteration >= 1)
        if asked and where not in self.store.skipped:
            raise StopAfterStage(where)

    def on_main(self, fn: Callable[[], Any], *, share: bool = False) -> Any:
        """Run ``fn`` on the main process only; the others learn whether it finished, stopped or
        failed, and with ``share`` its (small, picklable) value."""
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                value = fn()
                outcome = ("ok", value if share else None)
            except StopAfterStage as stop:
                outcome, error = ("stop", stop.args[0]), stop
            except BaseException as err:  # tell the other ranks before re-raising
                outcome, error = _failure(err), err
        if self.state.num_processes > 1:
            outcome = self.shards.broadcast(outcome)
        if error is not None:
            raise error
        kind, detail = outcome
        if kind == "stop":
            raise StopAfterStage(detail)
        _raise_main_failure(kind, detail)
        return detail

    def write_iteration_manifests(self, creator: str) -> None:
        """``iter_<t>/manifest.json``: every stage's manifest of that iteration, without its config."""
        if not self.is_main:
            return
        for report in self.reports:
            if report.iteration == 0:
                continue
            write_json_atomic(self.store.root / f"iter_{report.iteration}" / MANIFEST, {
                "iteration": report.iteration, "creator": creator,
                "stages": {name: {k: v for k, v in m.items() if k != "config"}
                           for name, m in report.manifests.items() if m},
            })


def _cuda():
    """``torch.cuda`` when the run uses a CUDA device (torch is loaded by then), else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _failure(err: BaseException) -> tuple[str, str]:
    """How the main process tells the others about ``err``: a user-facing error keeps its one line."""
    if isinstance(err, EvaError):
        return "user_error", str(err)
    return "error", f"{type(err).__name__}: {err}"


def _raise_main_failure(kind: str, detail: Any) -> None:
    """On a non-main process: fail the way the main process failed."""
    if kind == "user_error":
        raise EvaError(detail)
    if kind == "error":
        raise RuntimeError(f"the main process failed: {detail}")
