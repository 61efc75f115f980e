"""The creator's stages (EVA Algorithm 1, steps 1–3) on X_{t-1} and the policy π_{t-1}.

``creator_samples`` → ``creator_rewards`` → ``scores`` (informativeness) → ``selected``
(the informative subset) → ``evolved`` (new prompts). Mixing them into X_t is the
solver's ``prompts`` stage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from datasets import Dataset

from eva_plugin import plugins
from eva_plugin.artifacts import StageResult
from eva_plugin.content import local_id
from eva_plugin.context import Iteration, Stage, as_dict
from eva_plugin.creator import hygiene
from eva_plugin.creator.evolvers import STATUSES, Completion
from eva_plugin.creator.proxies import finite, usable
from eva_plugin.creator.proxies import weights as proxy_weights
from eva_plugin.errors import EvaError
from eva_plugin.generation.completions import Completions, FailureLimit
from eva_plugin.plugin_outputs import checked_evolved
from eva_plugin.prompt_sets import creator_input, creator_input_id, split_stats
from eva_plugin.runtime import SHARED
from eva_plugin.secrets import redact


def _sampling(it: Iteration) -> dict:
    return {"policy": it.run.policy_id(it.t - 1), "generation": as_dict(it.eva.generation), "seed": it.run.seed}


class CreatorSamples(Stage):
    """``num_samples`` responses of π_{t-1} to every prompt of X_{t-1}."""

    name, mode = "creator_samples", SHARED

    def config(self, it: Iteration) -> dict:
        return {"prompts": creator_input_id(it), "n": it.eva.num_samples, **_sampling(it)}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        prev = creator_input(it)
        texts, counts = it.sample(list(prev["prompt"]), it.eva.num_samples, self.name)
        return StageResult(prev.add_column("responses", texts),
                           {**counts, "generations": len(prev) * it.eva.num_samples, **split_stats(it)})


class CreatorRewards(Stage):
    """The reward of every creator sample."""

    name, mode = "creator_rewards", SHARED

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("creator_samples"), **it.run.reward_config("creator")}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        sampled = it.load("creator_samples")
        scores, counts = it.score(list(sampled["prompt"]), list(sampled["responses"]), "creator", role="creator")
        return StageResult(sampled.add_column("rewards", scores), counts)


class Scores(Stage):
    """info(x) of every prompt under the proxy, and the sampling weight it turns into."""

    name = "scores"

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("creator_rewards"), "proxy": it.eva.proxy, "weighting": it.eva.weighting}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        scored = it.load("creator_rewards")
        proxy = plugins.get("proxies", it.eva.proxy)
        rewards = list(scored["rewards"])
        # a prompt with fewer than two finite rewards says nothing: excluded (weight 0), with its reason
        ok = [usable(r) for r in rewards]
        info = [proxy.info(finite(r)) if good else float("nan") for r, good in zip(rewards, ok)]
        excluded = ["" if good else "nonfinite_rewards" for good in ok]
        if not any(ok):
            raise EvaError(f"iteration {it.t}: no prompt has two finite rewards (the reward model gave NaN or inf); "
                           f"check {it.eva.rewarder('creator').key}_model and its options")
        w = proxy_weights(proxy, rewards, it.eva.weighting)
        ds = Dataset.from_dict({"prompt_id": list(scored["prompt_id"]), "prompt": list(scored["prompt"]),
                                "info": info, "weight": w.tolist(), "excluded": excluded})
        finite_info = [v for v in info if np.isfinite(v)]
        return StageResult(ds, {"mean_info": float(np.mean(finite_info)) if finite_info else None,
                                "excluded_nonfinite": len(ok) - sum(ok)})


class Selected(Stage):
    """The informative subset: ``subset_fraction`` of X_{t-1}, drawn by the selector from the weights."""

    name = "selected"

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("scores"), "selector": it.eva.selector, "subset_fraction": it.eva.subset_fraction,
                "seed": it.run.seed}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        scores = it.load("scores")
        k = max(1, round(len(scores) * it.eva.subset_fraction))
        choose = plugins.get("selectors", it.eva.selector)
        # never an excluded prompt (no finite rewards to judge it by); older artifacts have no column
        excluded = scores["excluded"] if "excluded" in scores.column_names else [""] * len(scores)
        pool = [i for i, why in enumerate(excluded) if not why]
        weights = np.asarray(scores["weight"], dtype=np.float64)[pool]
        idx = [pool[int(i)] for i in choose(weights, min(k, len(pool)), it.rng(self.name))]
        return StageResult(scores.select(idx), {"selected": len(idx)})


class Evolved(Stage):
    """New prompts from the selected ones by the evolver, each with its status (kept or why dropped)."""

    name, mode = "evolved", SHARED

    def config(self, it: Iteration) -> dict:
        eva = it.eva
        config = {**it.upstream("selected"), "evolver": eva.evolver, "n": eva.num_evolutions,
                  "drop_truncated": eva.evolver_drop_truncated, "candidates": eva.evolver_candidates,
                  "feedback": eva.evolver_feedback, "min_words": eva.evolved_min_words,
                  "max_words": eva.evolved_max_words, "near_duplicate": eva.near_duplicate_threshold,
                  "drop_refusals": eva.evolved_drop_refusals,
                  "llm": local_id(eva.evolver_model) or it.run.policy_id(it.t - 1),
                  "evolver_generation": as_dict(eva.evolver_generation),
                  "policy_generation": as_dict(eva.generation) if eva.evolver_model is None else None}
        if eva.evolver_options:
            config["evolver_options"] = redact(eva.evolver_options)
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        eva = it.eva
        evolver = it.run.evolver()
        it.make_room(it.evolver_llm)
        limit = FailureLimit(eva.evolver_max_failure_rate, "eva.evolver_max_failure_rate", f"iter_{it.t}/{self.name}")
        complete = Completions(it.evolver_llm, it.params(eva.evolver_generation, self.name), it.run.runtime.shards,
                               cache=it.run.store.requests_dir(it.t, self.name), limit=limit)

        def generate(instructions: list[str]) -> list[Completion | None]:
            texts, done = complete(instructions)
            return [Completion(text, truncated=not ok and eva.evolver_drop_truncated) if text else None
                    for text, ok in zip(texts, done)]

        seeds = evolver_seeds(it)
        evolved = checked_evolved(evolver.evolve(seeds, generate, it.rng(self.name)), seeds, eva.evolver)
        rules = hygiene.Hygiene(eva.evolved_min_words, eva.evolved_max_words, eva.near_duplicate_threshold,
                                eva.evolved_drop_refusals)
        if eva.evolver != "none":  # "none" hands the selected prompts on as they are: no new text to screen
            source = creator_input(it)
            evolved = hygiene.apply(evolved, list(source["prompt"]), rules, list(source["prompt_id"]))
        status = {s: sum(e.status == s for e in evolved) for s in STATUSES}
        return StageResult(Dataset.from_list([e.as_row() for e in evolved]), {**complete.stats(), **status})


def evolver_seeds(it: Iteration) -> list[dict]:
    """The selected prompts for the evolver, with their best/worst responses when feedback is on."""
    seeds = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"]} for r in it.load("selected")]
    if not it.eva.evolver_feedback:
        return seeds
    by_id = {r["prompt_id"]: r for r in it.load("creator_rewards")}
    for seed in seeds:
        row = by_id[seed["prompt_id"]]
        rewards = row["rewards"]
        good = [i for i, r in enumerate(rewards) if math.isfinite(r)]  # selected prompts have two or more
        hi = max(good, key=rewards.__getitem__)
        lo = min(good, key=rewards.__getitem__)
        seed["feedback"] = {"best": row["responses"][hi], "best_reward": rewards[hi],
                            "worst": row["responses"][lo], "worst_reward": rewards[lo]}
    return seeds
