"""`eva.evolver: none` (the paper's "[no evolve]" ablation): the selected prompts are the evolved part."""

import numpy as np

from eva_plugin import plugins
from eva_plugin.options import EvolverContext


def test_none_evolver_returns_the_seeds_without_calling_the_llm():
    def generate(instructions):
        raise AssertionError("the none evolver must not call the LLM")

    evolver = plugins.build("evolvers", "none", options=plugins.parse_options("evolvers", "none", {}, "w"),
                            context=EvolverContext(num_evolutions=4, candidates=2))
    seeds = [{"prompt_id": "a", "prompt": "write a haiku"}, {"prompt_id": "b", "prompt": "sum 2 and 3"}]
    rows = evolver.evolve(seeds, generate, np.random.default_rng(0))
    assert [(r.prompt, r.parent_id, r.mutation, r.step, r.status) for r in rows] == [
        ("write a haiku", "a", "NONE", 1, "kept"), ("sum 2 and 3", "b", "NONE", 1, "kept")]
