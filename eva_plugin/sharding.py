"""Split generation and scoring across the processes of an ``accelerate launch``.

Every process gets an interleaved share of the items, works on it, and the shares are
gathered (``torch.distributed.all_gather_object`` on a CPU/gloo group of the launch, so
no GPU memory is taken while an inference engine holds it) so that every process ends
with the whole result in the original order; the main process then writes the artifact.
A failure inside the shared work is gathered too and raised on every process
("announced", see ``announced``). With one process everything runs in place.

A stage that keeps its finished chunks (``eva_plugin.chunks``) passes them along: the items of
chunks finished before (by any process of any earlier launch) are not shared out again.

``group_size`` > 1 is for engines spanning several ranks (vLLM tensor parallel under
``external_launcher``): the ranks of a group get the same share and only the first
rank's result is kept.

Every wait of the run between stages is on this group: a process that finished its share waits
for the slowest, the others wait while the main process does a stage's bookkeeping, and every
process waits at the end of a training round. Its timeout is the run's own (``wait_timeout``:
``eva.collective_timeout``, by default the longer of ``ddp_timeout`` and 6 hours), not torch's
30 minutes, which a rank that is half an hour behind at paper scale would exceed. The launch's
default group keeps ``ddp_timeout``: only the trainer's own collectives, which run in step, use it.
``GLOO_SOCKET_IFNAME`` (and the other ``GLOO_*`` variables, settable in the recipe's ``env:``) choose
the network interface this group uses.

A ``remote`` backend (a paid server) is not split: the main process sends every request, so
its concurrency limit is the run's, and the others receive the result (``Shards.from_main``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from eva_plugin.artifacts import fingerprint
from eva_plugin.chunks import WRITTEN, ChunkedCall, Reused, ShardWork, StageChunks
from eva_plugin.errors import EvaError, WaitTimedOut
from eva_plugin.generation import Conversation, Generations, SamplingParams
from eva_plugin.generation.seeding import prompt_seeds

logger = logging.getLogger(__name__)
#: Seconds between the main process's "still working" messages while it works alone (``from_main``): the
#: others wait in short collectives, never one as long as the work (gloo's default timeout is 30 minutes).
HEARTBEAT_SECONDS = 60.0

T = TypeVar("T")

#: How long a process waits for the others at a shared step unless the recipe says otherwise (seconds).
LONG_WAIT = 6 * 3600


def wait_timeout(collective_timeout: int | None, ddp_timeout: int | None = None) -> timedelta:
    """The run's wait at a shared step: ``eva.collective_timeout`` if set, else the longer of the recipe's
    ``ddp_timeout`` and ``LONG_WAIT``."""
    if collective_timeout is not None:
        return timedelta(seconds=collective_timeout)
    return timedelta(seconds=max(LONG_WAIT, ddp_timeout or 0))


def assignment(n: int, rank: int, world: int, group_size: int = 1) -> list[int]:
    """The item indices of ``rank``: every ``world // group_size``-th item from its group's index."""
    if group_size < 1 or world % group_size:
        raise ValueError(f"{world} processes cannot be split into groups of {group_size}")
    groups = world // group_size
    return list(range(rank // group_size, n, groups))


class ProcessFailed(EvaError, RuntimeError):
    """Another process failed during a shared step; this one stops too."""


def announced(err: BaseException) -> bool:
    """Whether every process already knows about ``err`` (it was raised after a shared gather)."""
    return isinstance(err, ProcessFailed) or getattr(err, "_eva_announced", False)


def announce(err: BaseException) -> BaseException:
    """Mark ``err`` as known to every process (each raises it from the same shared data)."""
    try:
        err._eva_announced = True  # type: ignore[attr-defined]
    except AttributeError:  # exceptions with __slots__: wrap so the mark survives
        wrapped = ProcessFailed(f"this process failed: {type(err).__name__}: {err}")
        wrapped.__cause__ = err
        return wrapped
    return err


class Shards:
    """The processes of this launch, as seen by the stages that share work."""

    def __init__(self, state, timeout: timedelta | None = None) -> None:
        self.state = state
        self.timeout = timeout if timeout is not None else wait_timeout(None)
        self.items: list[int] = []  # items each process worked on since ``reset_counts``
        self._group = None

    def reset_counts(self) -> None:
        self.items = [0] * self.world

    def count_items(self, rank: int, n: int) -> None:
        """Process ``rank`` worked on ``n`` more items (the counts start at zero when none were kept yet)."""
        if len(self.items) != self.world:
            self.reset_counts()
        self.items[rank] += n

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def group(self):
        """A gloo group over all processes for object collectives, waiting ``timeout`` (made on first use,
        which every process reaches at the same point)."""
        if self._group is None:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo", timeout=self.timeout)  # torch's default: 30 minutes
        return self._group

    def barrier(self) -> None:
        """Wait until every process got here (on this group: the run's long timeout)."""
        if self.world > 1:
            import torch.distributed as dist

            self._waited(lambda: dist.barrier(group=self.group))

    def _waited(self, collective: Callable[[], T]) -> T:
        """``collective()``; one that fails after waiting the whole timeout raises ``WaitTimedOut``, which says
        what to change (torch's own error names neither the knob nor the step)."""
        start = time.monotonic()
        try:
            return collective()
        except RuntimeError as err:  # torch's DistBackendError is one
            waited = time.monotonic() - start
            if waited < 0.9 * self.timeout.total_seconds():
                raise  # not a timeout: a process that died (the launcher stops the rest)
            raise WaitTimedOut(
                f"process {self.rank} waited {timedelta(seconds=round(waited))} for the other processes at a shared "
                f"step and gave up (eva.collective_timeout: {round(self.timeout.total_seconds())} s); if one "
                "process is that much slower, raise eva.collective_timeout, else look for the process that hangs"
            ) from err

    def gather(self, payload: Any) -> list[Any]:
        """Every process's (picklable) ``payload`` by rank, on every process."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        self._waited(lambda: dist.all_gather_object(out, payload, group=self.group))
        return out

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        self._waited(lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def together(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every process (e.g. load a model); if it fails anywhere, raise everywhere."""
        if self.world == 1:
            return fn()
        value, error, failure = None, None, None
        try:
            value = fn()
        except Exception as err:  # reported to the other processes, then re-raised here
            error, failure = err, f"{type(err).__name__}: {err}"
        self._raise_failures(self.gather(failure), error)
        return value

    def from_main(self, fn: Callable[[], T], heartbeat: float | None = None) -> T:
        """``fn()`` on the main process only, its (picklable) value on every process; a failure there is
        raised on every process. While it runs, the main process tells the others every ``heartbeat``
        seconds that it still works, so no collective waits for the whole of it."""
        if self.world == 1:
            return fn()
        heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        if self.rank != 0:
            while True:
                kind, detail = self.broadcast(None)
                if kind == "ok":
                    return detail
                if kind == "error":
                    raise ProcessFailed(f"process 0 failed: {detail}")
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as err:  # handed to the calling thread
                box["error"] = err

        worker = threading.Thread(target=run, name="eva-main-only", daemon=True)
        worker.start()
        worker.join(heartbeat)
        while worker.is_alive():
            self.broadcast(("working", None))
            worker.join(heartbeat)
        if "error" in box:
            err = box["error"]
            self.broadcast(("error", f"{type(err).__name__}: {err}"))
            raise announce(err)
        self.broadcast(("ok", box["value"]))
        return box["value"]

    def share(self, n: int, work: ShardWork, group_size: int = 1, key: str = "",
              chunks: ChunkedCall | None = None) -> tuple[list[Any], dict[str, int]]:
        """``work(indices)`` returns one result per index and counters; the merged results (in
        order, on every process) and the counters summed over the shares. ``key`` identifies
        the item list (a ``fingerprint``); processes holding different lists stop with an error.
        With ``chunks`` (a stage that keeps its finished chunks), the items of chunks finished before
        are taken from them, and each process works through the rest of its share chunk by chunk."""
        names = self._chunk_names(chunks)
        if self.world == 1:
            reused = chunks.load(names, n) if chunks else Reused()
            mine = [i for i in range(n) if i not in reused.results]
            self.count_items(0, len(mine))
            results, counts = self._work(work, mine, chunks, write=True)
            return _merged(n, reused, [(mine, results, counts)], chunks)
        mine = assignment(n, self.rank, self.world, group_size)
        payload, error, reused = None, None, Reused()
        try:
            reused = chunks.load(names, n) if chunks else reused
            mine = [i for i in mine if i not in reused.results]
            results, counts = self._work(work, mine, chunks, write=self.rank % group_size == 0)
            payload = ("ok", key, reused.signature(), mine, results, counts)
        except Exception as err:
            payload, error = ("error", f"{type(err).__name__}: {err}"), err
        gathered = self.gather(payload)
        self._raise_failures([p[1] if p[0] == "error" else None for p in gathered], error)
        if len({p[1] for p in gathered}) > 1:
            raise ProcessFailed("the processes were asked to share different item lists (a plugin that draws "
                                "unseeded random numbers?); every process must build the same list")
        if len({p[2] for p in gathered}) > 1:
            raise ProcessFailed(f"the processes read different finished chunks in {chunks.folder}; output_dir "
                                "must be one folder that every process sees (a filesystem every node shares)")
        parts = []
        for rank, (_, _, _, indices, results, counts) in enumerate(gathered):
            self.count_items(rank, len(indices))
            if rank % group_size == 0:  # a second rank of the same engine: the same results again
                parts.append((indices, results, counts))
        return _merged(n, reused, parts, chunks)

    def _chunk_names(self, chunks: ChunkedCall | None) -> list[str]:
        """The finished chunk files of the call, as the main process lists them (every process reads the same)."""
        if chunks is None:
            return []
        if self.world == 1:
            return chunks.names()
        return self.broadcast(chunks.names() if self.rank == 0 else None)

    @staticmethod
    def _work(work: ShardWork, mine: list[int], chunks: ChunkedCall | None,
              write: bool) -> tuple[list[Any], dict[str, int]]:
        """``work`` over this process's items ``mine`` (chunk by chunk with ``chunks``): one result per item."""
        results, counts = chunks.run(work, mine, write) if chunks else work(mine)
        if len(results) != len(mine):
            raise RuntimeError(f"work on {len(mine)} items returned {len(results)} results")
        return results, counts

    def _raise_failures(self, failures: list[str | None], own: BaseException | None) -> None:
        if own is not None:
            raise announce(own)
        bad = [(rank, msg) for rank, msg in enumerate(failures) if msg is not None]
        if bad:
            rank, msg = bad[0]
            raise ProcessFailed(f"process {rank} failed: {msg}")


def _merged(n: int, reused: Reused, parts: list[tuple[list[int], list[Any], dict[str, int]]],
            chunks: ChunkedCall | None) -> tuple[list[Any], dict[str, int]]:
    """The results of ``n`` items in order, from the reused chunks and the processes' parts, and the
    counters summed over both (the chunk files written go to the stage's tally)."""
    merged: list[Any] = [None] * n
    totals: dict[str, int] = {}
    for indices, results, counts in [(list(reused.results), list(reused.results.values()), reused.counts), *parts]:
        for i, result in zip(indices, results):
            merged[i] = result
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    written = totals.pop(WRITTEN, 0)
    if chunks is not None:
        chunks.note_written(written)
    return merged, totals


def generate(shards: Shards, backend, conversations: list[Conversation], n: int,
             params: SamplingParams, chunks: StageChunks | None = None) -> Generations:
    """``backend.generate`` over all processes; seeds are fixed per prompt before splitting, so the
    result does not depend on the number of processes, nor on the chunks (``chunks``: the running
    stage's, whose finished chunks a rerun reuses). A ``remote`` backend generates on the main
    process alone (one global limit on requests in flight) and every process gets its result."""
    seeds = prompt_seeds(params.seed, conversations)
    if getattr(backend, "remote", False):
        shards.count_items(0, len(conversations))
        return shards.from_main(lambda: backend.generate(conversations, n, params, seeds))

    def work(idx: list[int]) -> tuple[list, dict[str, int]]:
        gens = backend.generate([conversations[i] for i in idx], n, params, [seeds[i] for i in idx])
        finished = gens.finished or [None] * len(gens.texts)
        return list(zip(gens.texts, finished)), {"num_tokens": gens.num_tokens, "failed": gens.failed,
                                                 "dropped_too_long": gens.dropped_too_long}

    key = fingerprint([conversations, n, params.as_dict()])
    results, counts = shards.share(len(conversations), work, backend.ranks_per_engine, key=key,
                                   chunks=chunks.call("sample", key) if chunks else None)
    texts = [list(texts) for texts, _ in results]
    finished = [] if any(f is None for _, f in results) else [list(f) for _, f in results]
    return Generations(texts, counts.get("num_tokens", 0), finished, counts.get("failed", 0),
                       dropped_too_long=counts.get("dropped_too_long", 0))


def score(shards: Shards, reward_model, conversations: list[Conversation],
          responses: list[list[str]], plugin: str = "", chunks: StageChunks | None = None) -> list[list[float]]:
    """``reward_model.score`` over all processes, prompt by prompt (a prompt's responses stay together,
    which pair-wise models need). Each share's result is checked where it leaves the plugin
    (``plugin_outputs.checked_rewards``: one reward per response, numbers only), ``plugin`` named.
    ``chunks``: as for ``generate``."""
    from eva_plugin.plugin_outputs import checked_rewards

    def work(idx: list[int]) -> tuple[list, dict[str, int]]:
        if not idx:
            return [], {}
        mine = [responses[i] for i in idx]
        return checked_rewards(reward_model.score([conversations[i] for i in idx], mine), mine, plugin), {}

    key = fingerprint([conversations, responses])
    results, _ = shards.share(len(conversations), work, key=key, chunks=chunks.call("score", key) if chunks else None)
    return results
