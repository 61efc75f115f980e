"""One completion per instruction from an LLM (the evolver and the rewriter), shared across processes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from eva_plugin.data import user_turn
from eva_plugin.errors import EvaError
from eva_plugin.generation import SamplingParams, usage_stats
from eva_plugin.generation.seeding import derive_seed
from eva_plugin.sharding import Shards, announce
from eva_plugin.sharding import generate as shared_generate


class TooManyFailures(EvaError):
    """More of the LLM's responses failed than the run allows (``eva.evolver_max_failure_rate``)."""


@dataclasses.dataclass(frozen=True)
class FailureLimit:
    """The share of responses that may fail (``rate``), the recipe key that sets it and what is asking."""

    rate: float
    key: str
    what: str  # e.g. "iter_1/evolved"


class Completions:
    """Calls an LLM (a ``runtime.OnDemand`` backend) with a list of instructions, counting tokens, failures and
    (a remote backend) requests, tokens and cost. A remote backend keeps its answers in ``cache`` (a folder
    that outlives a killed stage) while a call runs. With ``limit``, a call after which more than
    ``limit.rate`` of the responses asked so far failed raises ``TooManyFailures`` on every process."""

    def __init__(self, llm, params: SamplingParams, shards: Shards, *, cache: Path | None = None,
                 limit: FailureLimit | None = None) -> None:
        self.llm, self.params, self.shards = llm, params, shards
        self.cache, self.limit = cache, limit
        self.tokens = self.failed = self.calls = self.asked = 0
        self.usage: dict[str, float] = {}
        self.last_error = ""

    def __call__(self, instructions: list[str]) -> tuple[list[str], list[bool]]:
        """Texts and whether each ended on its own (True where the backend cannot tell). Each call
        samples afresh: an instruction sent again in a later call (a failed rewrite retried with
        the same mutation) gets a new seed."""
        backend = self.shards.together(self.llm.get)
        params = dataclasses.replace(self.params, seed=derive_seed(self.params.seed, "call", self.calls))
        self.calls += 1
        use_cache = getattr(backend, "remote", False) and self.cache is not None and self.shards.rank == 0
        if use_cache:
            backend.use_cache(self.cache)
        try:
            gens = shared_generate(self.shards, backend, [user_turn(i) for i in instructions], 1, params)
        finally:
            if use_cache:
                backend.use_cache(None)
        self.tokens += gens.num_tokens
        self.failed += gens.failed
        self.asked += len(instructions)
        for key, value in gens.usage.items():
            self.usage[key] = self.usage.get(key, 0) + value
        self.last_error = gens.last_error or self.last_error
        self._check()
        done = gens.finished or [[True]] * len(gens.texts)
        return [texts[0] if texts else "" for texts in gens.texts], [ok[0] for ok in done]

    def _check(self) -> None:
        """Raise ``TooManyFailures`` (the same on every process: the counts are the shared result's)."""
        limit = self.limit
        if limit is None or not self.asked or self.failed <= limit.rate * self.asked:
            return
        message = (f"{limit.what}: {self.failed} of {self.asked} LLM responses failed "
                   f"({self.failed / self.asked:.1%}), above {limit.key} {limit.rate:g}")
        if self.last_error:
            message += f"; last error: {self.last_error}"
        if self.usage.get("requests") and self.cache is not None:
            message += f"; the answered requests are kept in {self.cache} and a rerun sends only the others"
        raise announce(TooManyFailures(message))

    def stats(self) -> dict[str, float]:
        """``tokens_generated`` and ``llm_failures``; with a remote backend also its ``usage`` counters."""
        return {"tokens_generated": self.tokens, "llm_failures": self.failed, **usage_stats(self.usage)}
