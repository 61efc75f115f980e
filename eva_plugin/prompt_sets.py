"""The prompt sets of a run: the seed pool (``iter_0/seed_pool``), its splits, the creator's input
and the buffer.

The shuffled seed pool is cut into splits of ``prompts_per_iteration`` prompts (null: the pool
divided evenly among the rounds that need a split). A round takes the next unused split when it
trains without the creator (``creator: none``, or a warm-up round) or when the creator starts
from fresh seeds (``creator_input: fresh``, paper Table 26). With ``creator_input: previous``
the creator evolves X_{t-1}, the set the last round trained on (the first split in round 1).
Running out of seed prompts is an error before any model loads, unless ``reuse_pool`` is set.
With ``splits: ordered`` the pool is not pooled: split ``i`` is dataset ``i`` of the mixture (its
prompts shuffled among themselves with the run seed), ``prompts_per_iteration`` of them or all it has;
the seed pool's manifest lists which dataset each split comes from.
Held-out evaluation prompts (``iter_0/eval_prompts``: ``eva.eval_prompts`` or the recipe's
``test_split_size`` share) are left out of the seed pool.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from datasets import Dataset

from eva_plugin import config as eva_config
from eva_plugin.artifacts import StageResult
from eva_plugin.content import content_id
from eva_plugin.context import Iteration, Run, Stage
from eva_plugin.data import DatasetSpec, load_prompts
from eva_plugin.errors import RecipeError

logger = logging.getLogger(__name__)

class SeedPool(Stage):
    """``iter_0/seed_pool``: every seed prompt of the recipe's datasets, shuffled with the run seed
    (``splits: ordered``: dataset by dataset in the recipe's order, each shuffled within itself, with
    a ``dataset`` column holding the dataset's position in the mixture)."""

    name = "seed_pool"

    def config(self, it: Iteration) -> dict:
        config = pool_config(it)
        if eval_on(it.run):  # the held-out evaluation prompts are never trained on (absent: older fingerprints)
            config["held_out"] = it.run.upstream(0, EvalPrompts.name)[EvalPrompts.name]
        if ordered(it.run):  # absent when shuffled: older fingerprints hold
            config["splits"] = it.eva.splits
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        recipe = it.run.recipe
        counts: dict[str, int] = {}
        pool = load_prompts(recipe.datasets, it.eva.prompt_column, seed=recipe.mixture_seed, counts=counts,
                            dataset_column=ordered(it.run))
        stats = {}
        if eval_on(it.run):
            held = set(it.run.store.load(0, EvalPrompts.name)["prompt_id"])
            keep = [i for i, pid in enumerate(pool["prompt_id"]) if pid not in held]
            stats["held_out"] = len(pool) - len(keep)
            pool = pool.select(keep).flatten_indices(keep_in_memory=True)
        if ordered(it.run):
            pool = pool.select(ordered_rows(list(pool["dataset"]), len(recipe.datasets), it.run.seed))
            stats["seed_splits"] = ordered_split_table(it.run, list(pool["dataset"]))
        else:
            pool = pool.shuffle(seed=it.run.seed)
        return StageResult(pool.flatten_indices(), {"pool_size": len(pool),
                                                    "duplicates_dropped": counts.get("duplicates_dropped", 0),
                                                    "dropped_rows": {"no_prompt": counts.get("rows_without_prompt", 0)},
                                                    **stats})


def ordered(run: Run) -> bool:
    """Whether split ``i`` is dataset ``i`` of the mixture (``eva.splits: ordered``)."""
    return run.eva.splits == "ordered"


def ordered_rows(datasets: list[int], count: int, seed: int) -> list[int]:
    """The pool's rows dataset by dataset (0 … ``count`` - 1), each dataset's rows in the order
    ``Dataset.shuffle(seed=seed)`` gives them."""
    order: list[int] = []
    for d in range(count):
        rows = [i for i, of in enumerate(datasets) if of == d]
        order += [rows[k] for k in np.random.default_rng(seed).permutation(len(rows))]
    return order


def dataset_name(spec: DatasetSpec) -> str:
    """A dataset of the mixture as a user reads it: its id or path, config and split."""
    config = f", config {spec.config}" if spec.config else ""
    return f"{spec.path} ({spec.split}{config})"


def ordered_split_table(run: Run, datasets: list[int]) -> list[dict]:
    """The seed pool manifest's ``seed_splits`` (ordered): per dataset, the round that draws it (null: none),
    its prompts in the pool and how many the round takes."""
    rounds = eva_config.split_rounds(run.creator, run.eva)
    table = []
    for d, spec in enumerate(run.recipe.datasets):
        have = datasets.count(d)
        table.append({"split": d, "round": rounds[d] if d < len(rounds) else None, "dataset": dataset_name(spec),
                      "prompts": have, "taken": ordered_size(run, have) if d < len(rounds) else 0})
    return table


def ordered_size(run: Run, have: int) -> int:
    """How many prompts an ordered split takes from a dataset with ``have`` prompts in the pool."""
    return min(run.eva.prompts_per_iteration or have, have)


def pool_config(it: Iteration) -> dict:
    """What decides the seed pool before any held-out prompts leave it."""
    recipe = it.run.recipe
    config = {"datasets": [dataclasses.asdict(s) for s in recipe.datasets], "column": it.eva.prompt_column,
              "seed": it.run.seed, "mixture_seed": recipe.mixture_seed}
    # a prompt file (or saved dataset) replaced at the same path is another pool
    contents = {p: content_id(p) for s in recipe.datasets for p in s.local_paths()}
    if contents:
        config["contents"] = contents
    return config


def eval_on(run: Run) -> bool:
    """Whether the run evaluates its policies: ``eva.eval_prompts``, or the recipe's ``test_split_size``."""
    return bool(run.eva.eval_prompts) or bool(run.recipe.test_split_size)


def eval_prompts_path(run: Run) -> str:
    """``eva.eval_prompts``; a relative path that is not there from the working directory is read beside
    the recipe (like the recipe's datasets)."""
    path, source = run.eva.eval_prompts, run.recipe.source
    if source and not Path(path).is_absolute() and not Path(path).exists() and (Path(source).parent / path).exists():
        return str(Path(source).parent / path)
    return path


class EvalPrompts(Stage):
    """``iter_0/eval_prompts``: the held-out evaluation prompts: ``eva.eval_prompts``, or the recipe's
    ``test_split_size`` share of the seed prompts (split with the mixture seed, as the plain DPO round
    does). The seed pool leaves all of them out; ``eva.eval_size`` caps how many are answered."""

    name = "eval_prompts"

    def config(self, it: Iteration) -> dict:
        eva, recipe = it.eva, it.run.recipe
        if eva.eval_prompts:
            path = eval_prompts_path(it.run)
            config = {"eval_prompts": path, "column": eva.prompt_column,
                      "contents": content_id(path) if Path(path).exists() else None}
        else:
            config = {"pool": pool_config(it), "test_split_size": recipe.test_split_size}
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        eva, recipe = it.eva, it.run.recipe
        if eva.eval_prompts:
            held = load_prompts([DatasetSpec(path=eval_prompts_path(it.run), split="train")], eva.prompt_column)
        else:
            pool = load_prompts(recipe.datasets, eva.prompt_column, seed=recipe.mixture_seed)
            size = recipe.test_split_size
            if len(pool) < 2 or (size >= 1 and int(size) >= len(pool)):
                raise RecipeError(f"test_split_size {size} leaves no seed prompts to train on (the pool has "
                                  f"{len(pool)}); lower it or set eva.eval_prompts")
            held = pool.train_test_split(test_size=size, seed=recipe.mixture_seed)["test"]
        held = held.flatten_indices(keep_in_memory=True)
        return StageResult(held, {"prompts": len(held), "source": "eval_prompts" if eva.eval_prompts
                                  else "test_split_size"})


def takes_split(run: Run, t: int) -> bool:
    """Whether round ``t`` draws a new seed split (for training, or as the creator's input)."""
    return eva_config.takes_split(run.creator, run.eva, t)


def split_index(run: Run, t: int) -> int:
    """The seed split round ``t`` uses: its own new one, or (creator on X_{t-1}) the last one drawn."""
    return max(0, sum(takes_split(run, s) for s in range(1, t + 1)) - 1)


def splits_needed(run: Run) -> int:
    return len(eva_config.split_rounds(run.creator, run.eva))


def split_size(run: Run, pool_size: int) -> int:
    """|X_t|: ``prompts_per_iteration``, or the pool divided evenly among the splits the run needs."""
    return run.eva.prompts_per_iteration or max(1, pool_size // splits_needed(run))


def check_supply(run: Run, pool: Dataset) -> None:
    """Refuse a run whose rounds need more seed prompts than the pool has (before any model loads).
    Ordered splits: refuse a dataset that gives its round no prompt; say (once) which take fewer than
    ``prompts_per_iteration``."""
    if ordered(run):
        check_ordered_supply(run, list(pool["dataset"]))
        return
    pool_size = len(pool)
    need, size = splits_needed(run), split_size(run, pool_size)
    if need * size > pool_size and not run.eva.reuse_pool:
        raise RecipeError(
            f"the {run.eva.iterations} rounds need {need} seed split(s) of {size} prompts ({need * size}) but "
            f"the seed pool has {pool_size}; add prompts, lower eva.prompts_per_iteration, or set "
            "eva.reuse_pool: true to use seed prompts again")


def check_ordered_supply(run: Run, datasets: list[int]) -> None:
    wanted = run.eva.prompts_per_iteration
    for row in ordered_split_table(run, datasets):
        if row["round"] is None:
            continue
        if not row["prompts"]:
            raise RecipeError(
                f"eva.splits: ordered: round {row['round']} trains on dataset {row['split'] + 1} of the mixture, "
                f"{row['dataset']}, which gives no seed prompt (empty, weight 0, held out, or every prompt already "
                "in an earlier dataset); give it prompts or set eva.splits: shuffled")
        if wanted and row["prompts"] < wanted and run.runtime.is_main:
            logger.warning("eva.splits: ordered: round %d's dataset %s has %d seed prompts, fewer than "
                           "prompts_per_iteration %d; the round uses all %d", row["round"], row["dataset"],
                           row["prompts"], wanted, row["prompts"])


def check_prompts_fit(run: Run, pool: Dataset) -> None:
    """Refuse a policy whose context (``config.json``) holds none of the seed prompts with room for one
    new token, before any model loads: counted with the folder's ``tokenizer.json`` (no model, no
    chat template, so a lower bound). A few prompts too long are answered empty and counted later."""
    from eva_plugin.model_files import context_length, prompt_token_counts

    folder = Path(str(run.recipe.model.model_name_or_path)).expanduser()
    limit = context_length(folder) if folder.is_dir() else None
    if limit is None or not len(pool):
        return
    counts = prompt_token_counts(folder, list(pool["prompt"]))
    if counts and min(counts) + 1 > limit:
        raise RecipeError(
            f"the policy's context is {limit} tokens (config.json of {folder}) but every one of the {len(counts)} "
            f"seed prompts is longer (shortest: {min(counts)} tokens); use a model with a longer context or "
            "shorter prompts")


def seed_split(it: Iteration, index: int) -> Dataset:
    """Split ``index`` of the seed pool (wrapping around only with ``reuse_pool``); ordered: the first
    ``prompts_per_iteration`` prompts of dataset ``index`` (all of them when it has fewer)."""
    pool = it.run.store.load(0, SeedPool.name)
    if ordered(it.run):
        rows = [i for i, of in enumerate(pool["dataset"]) if of == index]
        return with_origin(pool.select(rows[:ordered_size(it.run, len(rows))]), "seed")
    n = min(split_size(it.run, len(pool)), len(pool))
    return with_origin(pool.select([(index * n + i) % len(pool) for i in range(n)]), "seed")


def split_stats(it: Iteration) -> dict:
    """For the manifest of the stage that draws this round's seed split (ordered splits): which split
    and which dataset of the mixture it came from."""
    if not ordered(it.run) or not takes_split(it.run, it.t):
        return {}
    index = split_index(it.run, it.t)
    return {"seed_split": index, "dataset": dataset_name(it.run.recipe.datasets[index])}


def previous_set(it: Iteration) -> Dataset:
    """X_{t-1}: the first seed split in round 1, else the set the previous round trained on."""
    return seed_split(it, 0) if it.t == 1 else it.run.store.load(it.t - 1, prompt_set_stage(it.t - 1))


def creator_input(it: Iteration) -> Dataset:
    """What the creator scores and evolves: the seed split this round draws, or X_{t-1}."""
    return seed_split(it, split_index(it.run, it.t)) if takes_split(it.run, it.t) else previous_set(it)


def creator_input_id(it: Iteration) -> str:
    """What identifies the creator's input in fingerprints."""
    if takes_split(it.run, it.t):
        return f"{prompt_set_id(it.run, 0)}:split {split_index(it.run, it.t)}:{it.eva.prompts_per_iteration}"
    return prompt_set_id(it.run, it.t - 1)


def prompt_set_stage(t: int) -> str:
    """The stage holding iteration ``t``'s prompts: the seed pool at 0, X_t after."""
    return SeedPool.name if t == 0 else "prompts"


def prompt_set_id(run: Run, t: int) -> str:
    """The fingerprint of ``prompt_set_stage(t)`` (how later stages name those prompts)."""
    name = prompt_set_stage(t)
    return run.upstream(t, name)[name]


def buffer_source(it: Iteration) -> Dataset:
    """Where the non-evolved share of X_t is drawn from: the seed split the creator's prompts descend
    from (``buffer: seed``, the paper's original data), or X_{t-1} (``buffer: previous``)."""
    if it.eva.buffer == "previous":
        return previous_set(it)
    return seed_split(it, split_index(it.run, it.t))


def with_origin(ds: Dataset, origin: str) -> Dataset:
    """Tag rows in memory (``map`` would write cache files into the artifact folder)."""
    return ds.flatten_indices(keep_in_memory=True).add_column("origin", [origin] * len(ds))
