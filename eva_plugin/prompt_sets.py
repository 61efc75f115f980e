"""The prompt sets of a run: the seed pool (``iter_0/prompts``), its splits, the creator's input
and the buffer.

The shuffled seed pool is cut into splits of ``prompts_per_iteration`` prompts (null: the pool
divided evenly among the rounds that need a split). A round takes the next unused split when it
trains without the creator (``creator: none``, or a warm-up round) or when the creator starts
from fresh seeds (``creator_input: fresh``, paper Table 26). With ``creator_input: previous``
the creator evolves X_{t-1}, the set the last round trained on (the first split in round 1).
Running out of seed prompts is an error before any model loads, unless ``reuse_pool`` is set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import Dataset

from eva_plugin.artifacts import StageResult
from eva_plugin.content import content_id
from eva_plugin.context import Iteration, Run, Stage
from eva_plugin.data import load_prompts
from eva_plugin.errors import RecipeError


class SeedPool(Stage):
    """``iter_0/prompts``: every seed prompt of the recipe's datasets, shuffled with the run seed."""

    name = "prompts"

    def config(self, it: Iteration) -> dict:
        recipe = it.run.recipe
        config = {"datasets": [dataclasses.asdict(s) for s in recipe.datasets], "column": it.eva.prompt_column,
                  "seed": it.run.seed, "mixture_seed": recipe.mixture_seed}
        # a prompt file (or saved dataset) replaced at the same path is another pool
        contents = {s.path: content_id(s.path) for s in recipe.datasets if Path(s.path).exists()}
        if contents:
            config["contents"] = contents
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        recipe = it.run.recipe
        counts: dict[str, int] = {}
        pool = load_prompts(recipe.datasets, it.eva.prompt_column, seed=recipe.mixture_seed, counts=counts)
        pool = pool.shuffle(seed=it.run.seed)
        return StageResult(pool.flatten_indices(), {"pool_size": len(pool),
                                                    "duplicates_dropped": counts.get("duplicates_dropped", 0)})


def takes_split(run: Run, t: int) -> bool:
    """Whether round ``t`` draws a new seed split (for training, or as the creator's input)."""
    if not run.creator_on(t):
        return True
    return run.eva.creator_input == "fresh" or t == 1


def split_index(run: Run, t: int) -> int:
    """The seed split round ``t`` uses: its own new one, or (creator on X_{t-1}) the last one drawn."""
    return max(0, sum(takes_split(run, s) for s in range(1, t + 1)) - 1)


def splits_needed(run: Run) -> int:
    return sum(takes_split(run, t) for t in range(1, run.eva.iterations + 1))


def split_size(run: Run, pool_size: int) -> int:
    """|X_t|: ``prompts_per_iteration``, or the pool divided evenly among the splits the run needs."""
    return run.eva.prompts_per_iteration or max(1, pool_size // splits_needed(run))


def check_supply(run: Run, pool_size: int) -> None:
    """Refuse a run whose rounds need more seed prompts than the pool has (before any model loads)."""
    need, size = splits_needed(run), split_size(run, pool_size)
    if need * size > pool_size and not run.eva.reuse_pool:
        raise RecipeError(
            f"the {run.eva.iterations} rounds need {need} seed split(s) of {size} prompts ({need * size}) but "
            f"the seed pool has {pool_size}; add prompts, lower eva.prompts_per_iteration, or set "
            "eva.reuse_pool: true to use seed prompts again")


def seed_split(it: Iteration, index: int) -> Dataset:
    """Split ``index`` of the seed pool (wrapping around only with ``reuse_pool``)."""
    pool = it.run.store.load(0, "prompts")
    n = min(split_size(it.run, len(pool)), len(pool))
    return with_origin(pool.select([(index * n + i) % len(pool) for i in range(n)]), "seed")


def creator_input(it: Iteration) -> Dataset:
    """What the creator scores and evolves: a seed split, or X_{t-1}."""
    if it.eva.creator_input == "fresh" or it.t == 1:
        return seed_split(it, split_index(it.run, it.t))
    return it.run.store.load(it.t - 1, "prompts")


def creator_input_id(it: Iteration) -> str:
    """What identifies the creator's input in fingerprints."""
    if it.eva.creator_input == "fresh" or it.t == 1:
        return f"{it.run.upstream(0, 'prompts')['prompts']}:split {split_index(it.run, it.t)}:" \
               f"{it.eva.prompts_per_iteration}"
    return it.run.upstream(it.t - 1, "prompts")["prompts"]


def buffer_source(it: Iteration) -> Dataset:
    """Where the non-evolved share of X_t is drawn from: the seed split the creator's prompts descend
    from (``buffer: seed``, the paper's original data), or X_{t-1} (``buffer: previous``)."""
    if it.eva.buffer == "previous":
        return creator_input(it) if it.t == 1 else it.run.store.load(it.t - 1, "prompts")
    return seed_split(it, split_index(it.run, it.t))


def with_origin(ds: Dataset, origin: str) -> Dataset:
    """Tag rows in memory (``map`` would write cache files into the artifact folder)."""
    return ds.flatten_indices(keep_in_memory=True).add_column("origin", [origin] * len(ds))
