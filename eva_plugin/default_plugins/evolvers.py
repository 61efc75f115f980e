"""Built-in prompt evolvers: the three Evol* chains, ``self_instruct`` (templates from distilabel)
and ``none`` (the paper's "[no evolve]" ablation: the selected prompts themselves)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eva_plugin import hookimpl
from eva_plugin.creator.evolved import EvolvedPrompt
from eva_plugin.creator.evolvers import EvolComplexity, EvolInstruct, EvolQuality
from eva_plugin.creator.self_instruct import SelfInstruct
from eva_plugin.options import EvolverContext, NoOptions


class NoEvolution:
    """EVA's "[no evolve]" rows: each selected seed is its own (single) evolved prompt, no LLM call.

    The rows repeat prompts of the pool on purpose: the creator must not drop them as duplicates.
    """

    Options = NoOptions

    @classmethod
    def from_options(cls, options: NoOptions, context: EvolverContext) -> NoEvolution:
        return cls()

    def evolve(self, seeds: Sequence[dict], generate: Callable, rng) -> list[EvolvedPrompt]:
        return [EvolvedPrompt(prompt=seed["prompt"], parent_id=seed["prompt_id"], mutation="NONE", step=1)
                for seed in seeds]


@hookimpl
def register_evolvers(register: Callable) -> None:
    register("evol_instruct", EvolInstruct)
    register("evol_complexity", EvolComplexity)
    register("evol_quality", EvolQuality)
    register("self_instruct", SelfInstruct)
    register("none", NoEvolution)
