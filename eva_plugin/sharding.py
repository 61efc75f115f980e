"""Split generation and scoring across the processes of an ``accelerate launch``.

Every process gets an interleaved share of the items, works on it, and the shares are
gathered (``torch.distributed.all_gather_object`` on a CPU/gloo group of the launch, so
no GPU memory is taken while an inference engine holds it) so that every process ends
with the whole result in the original order; the main process then writes the artifact.
A failure inside the shared work is gathered too and raised on every process
("announced", see ``announced``). With one process everything runs in place.

``group_size`` > 1 is for engines spanning several ranks (vLLM tensor parallel under
``external_launcher``): the ranks of a group get the same share and only the first
rank's result is kept.

A ``remote`` backend (a paid server) is not split: the main process sends every request, so
its concurrency limit is the run's, and the others receive the result (``Shards.from_main``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from eva_plugin.artifacts import fingerprint
from eva_plugin.errors import EvaError
from eva_plugin.generation import Conversation, Generations, SamplingParams
from eva_plugin.generation.seeding import prompt_seeds

logger = logging.getLogger(__name__)
#: Seconds between the main process's "still working" messages while it works alone (``from_main``): the
#: others wait in short collectives, never one as long as the work (gloo's default timeout is 30 minutes).
HEARTBEAT_SECONDS = 60.0

T = TypeVar("T")
ShardWork = Callable[[list[int]], tuple[list[Any], dict[str, int]]]


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

    def __init__(self, state) -> None:
        self.state = state
        self.items: list[int] = []  # items each process worked on since ``reset_counts``
        self._group = None

    def reset_counts(self) -> None:
        self.items = [0] * self.world

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def group(self):
        """A gloo group over all processes for object collectives (made on first use, which
        every process reaches at the same point)."""
        if self._group is None:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")
        return self._group

    def _gather(self, payload: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, payload, group=self.group)
        return out

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
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
        self._raise_failures(self._gather(failure), error)
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

    def share(self, n: int, work: ShardWork, group_size: int = 1, key: str = "") -> tuple[list[Any], dict[str, int]]:
        """``work(indices)`` returns one result per index and counters; the merged results (in
        order, on every process) and the counters summed over the shares. ``key`` identifies
        the item list (a ``fingerprint``); processes holding different lists stop with an error."""
        if len(self.items) != self.world:
            self.reset_counts()
        if self.world == 1:
            self.items[0] += n
            return work(list(range(n)))
        mine = assignment(n, self.rank, self.world, group_size)
        payload, error = None, None
        try:
            results, counts = work(mine)
            if len(results) != len(mine):
                raise RuntimeError(f"work on {len(mine)} items returned {len(results)} results")
            payload = ("ok", key, mine, results, counts)
        except Exception as err:
            payload, error = ("error", f"{type(err).__name__}: {err}"), err
        gathered = self._gather(payload)
        self._raise_failures([p[1] if p[0] == "error" else None for p in gathered], error)
        if len({p[1] for p in gathered}) > 1:
            raise ProcessFailed("the processes were asked to share different item lists (a plugin that draws "
                                "unseeded random numbers?); every process must build the same list")
        merged: list[Any] = [None] * n
        totals: dict[str, int] = {}
        for rank, (_, _, indices, results, counts) in enumerate(gathered):
            self.items[rank] += len(indices)
            if rank % group_size:
                continue  # a second rank of the same engine: the same results again
            for i, result in zip(indices, results):
                merged[i] = result
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        return merged, totals

    def _raise_failures(self, failures: list[str | None], own: BaseException | None) -> None:
        if own is not None:
            raise announce(own)
        bad = [(rank, msg) for rank, msg in enumerate(failures) if msg is not None]
        if bad:
            rank, msg = bad[0]
            raise ProcessFailed(f"process {rank} failed: {msg}")


def generate(shards: Shards, backend, conversations: list[Conversation], n: int,
             params: SamplingParams) -> Generations:
    """``backend.generate`` over all processes; seeds are fixed per prompt before splitting, so the
    result does not depend on the number of processes. A ``remote`` backend generates on the main
    process alone (one global limit on requests in flight) and every process gets its result."""
    seeds = prompt_seeds(params.seed, conversations)
    if getattr(backend, "remote", False):
        if len(shards.items) != shards.world:
            shards.reset_counts()
        shards.items[0] += len(conversations)
        return shards.from_main(lambda: backend.generate(conversations, n, params, seeds))

    def work(idx: list[int]) -> tuple[list, dict[str, int]]:
        gens = backend.generate([conversations[i] for i in idx], n, params, [seeds[i] for i in idx])
        finished = gens.finished or [None] * len(gens.texts)
        return list(zip(gens.texts, finished)), {"num_tokens": gens.num_tokens, "failed": gens.failed,
                                                 "dropped_too_long": gens.dropped_too_long}

    results, counts = shards.share(len(conversations), work, backend.ranks_per_engine,
                                 key=fingerprint([conversations, n, params.as_dict()]))
    texts = [list(texts) for texts, _ in results]
    finished = [] if any(f is None for _, f in results) else [list(f) for _, f in results]
    return Generations(texts, counts.get("num_tokens", 0), finished, counts.get("failed", 0),
                       dropped_too_long=counts.get("dropped_too_long", 0))


def score(shards: Shards, reward_model, conversations: list[Conversation],
          responses: list[list[str]], plugin: str = "") -> list[list[float]]:
    """``reward_model.score`` over all processes, prompt by prompt (a prompt's responses stay together,
    which pair-wise models need). Each share's result is checked where it leaves the plugin
    (``plugin_outputs.checked_rewards``: one reward per response, numbers only), ``plugin`` named."""
    from eva_plugin.plugin_outputs import checked_rewards

    def work(idx: list[int]) -> tuple[list, dict[str, int]]:
        if not idx:
            return [], {}
        mine = [responses[i] for i in idx]
        return checked_rewards(reward_model.score([conversations[i] for i in idx], mine), mine, plugin), {}

    results, _ = shards.share(len(conversations), work, key=fingerprint([conversations, responses]))
    return results
