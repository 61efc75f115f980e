"""One completion per instruction from an LLM (the evolver and the rewriter), shared across processes."""

from __future__ import annotations

import dataclasses

from eva_plugin.data import user_turn
from eva_plugin.generation import SamplingParams
from eva_plugin.generation.seeding import derive_seed
from eva_plugin.sharding import Shards
from eva_plugin.sharding import generate as shared_generate


class Completions:
    """Calls an LLM (a ``runtime.OnDemand`` backend) with a list of instructions, counting tokens and failures."""

    def __init__(self, llm, params: SamplingParams, shards: Shards) -> None:
        self.llm, self.params, self.shards = llm, params, shards
        self.tokens = self.failed = self.calls = 0

    def __call__(self, instructions: list[str]) -> tuple[list[str], list[bool]]:
        """Texts and whether each ended on its own (True where the backend cannot tell). Each call
        samples afresh: an instruction sent again in a later call (a failed rewrite retried with
        the same mutation) gets a new seed."""
        backend = self.shards.together(self.llm.get)
        params = dataclasses.replace(self.params, seed=derive_seed(self.params.seed, "call", self.calls))
        self.calls += 1
        gens = shared_generate(self.shards, backend, [user_turn(i) for i in instructions], 1, params)
        self.tokens += gens.num_tokens
        self.failed += gens.failed
        done = gens.finished or [[True]] * len(gens.texts)
        return [texts[0] if texts else "" for texts in gens.texts], [ok[0] for ok in done]

    def stats(self) -> dict[str, int]:
        return {"tokens_generated": self.tokens, "llm_failures": self.failed}
