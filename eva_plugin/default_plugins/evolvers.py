"""Built-in prompt evolvers: the three Evol* chains and ``self_instruct`` (templates from distilabel)."""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin import hookimpl
from eva_plugin.creator.evolvers import EvolComplexity, EvolInstruct, EvolQuality
from eva_plugin.creator.self_instruct import SelfInstruct


@hookimpl
def register_evolvers(register: Callable) -> None:
    register("evol_instruct", EvolInstruct)
    register("evol_complexity", EvolComplexity)
    register("evol_quality", EvolQuality)
    register("self_instruct", SelfInstruct)
