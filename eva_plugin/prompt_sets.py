"""The prompt sets of a run: the seed pool (``iter_0/prompts``) and X_{t-1}, the set a round starts from.

X_0 is the head of the shuffled seed pool (``eva.prompts_per_iteration`` prompts, all by
default); X_t (t ≥ 1) is what the solver's ``prompts`` stage wrote in round t.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import Dataset

from eva_plugin.artifacts import StageResult
from eva_plugin.context import Iteration, Stage
from eva_plugin.data import load_prompts


class SeedPool(Stage):
    """``iter_0/prompts``: every seed prompt of the recipe's datasets, shuffled with the run seed."""

    name = "prompts"

    def config(self, it: Iteration) -> dict:
        recipe = it.run.recipe
        return {"datasets": [dataclasses.asdict(s) for s in recipe.datasets], "column": it.eva.prompt_column,
                "seed": it.run.seed, "mixture_seed": recipe.mixture_seed}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        recipe = it.run.recipe
        pool = load_prompts(recipe.datasets, it.eva.prompt_column, seed=recipe.mixture_seed)
        pool = pool.shuffle(seed=it.run.seed)
        return StageResult(pool.flatten_indices(), {"pool_size": len(pool)})


def set_size(it: Iteration, pool: Dataset) -> int:
    """|X_t|: ``eva.prompts_per_iteration``, at most the pool."""
    return min(it.eva.prompts_per_iteration or len(pool), len(pool))


def previous_prompts(it: Iteration) -> Dataset:
    """X_{t-1}: the head of the seed pool in round 1, else the previous round's prompt set."""
    store = it.run.store
    if it.t == 1:
        pool = store.load(0, "prompts")
        return with_origin(pool.select(range(set_size(it, pool))), "seed")
    return store.load(it.t - 1, "prompts")


def previous_prompts_id(it: Iteration) -> str:
    """What identifies X_{t-1} in fingerprints."""
    stage = it.run.upstream(it.t - 1 if it.t > 1 else 0, "prompts")["prompts"]
    return f"{stage}:{it.eva.prompts_per_iteration}"


def seed_slice(it: Iteration) -> Dataset:
    """``creator: none``: round t trains on the t-th slice of the seed pool (wrapping around)."""
    pool = it.run.store.load(0, "prompts")
    n = set_size(it, pool)
    return with_origin(pool.select([((it.t - 1) * n + i) % len(pool) for i in range(n)]), "seed")


def with_origin(ds: Dataset, origin: str) -> Dataset:
    """Tag rows in memory (``map`` would write cache files into the artifact folder)."""
    return ds.flatten_indices(keep_in_memory=True).add_column("origin", [origin] * len(ds))
