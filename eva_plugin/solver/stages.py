"""The solver's stages (EVA Algorithm 1, steps 4–8): X_t, its samples and rewards, pairs, training.

``prompts`` (X_t: evolved + buffer, or the next seed slice with ``creator: none``) →
``solver_samples`` → ``solver_rewards`` → ``pairs`` (best/worst) → [``rewritten``] → ``policy``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path

import numpy as np
from datasets import Dataset

from eva_plugin.artifacts import StageResult
from eva_plugin.content import local_id
from eva_plugin.context import Iteration, Stage, as_dict
from eva_plugin.creator.mixing import plan_mix
from eva_plugin.data import prompt_id
from eva_plugin.errors import TrainingError
from eva_plugin.generation.completions import Completions
from eva_plugin.plugin_outputs import PluginOutputError, no_pairs_message
from eva_plugin.prompt_sets import buffer_source, creator_input, prompt_set_id, seed_split, split_index, split_stats
from eva_plugin.runtime import EVERY, SHARED
from eva_plugin.solver.pairs import build_pairs
from eva_plugin.solver.rewriter import rewrite_pairs

logger = logging.getLogger(__name__)


class Prompts(Stage):
    """X_t: ``evolved_fraction`` evolved prompts + the rest from the buffer (EVA rounds), or the next
    split of the seed pool (``creator: none`` and warm-up rounds)."""

    name = "prompts"

    def config(self, it: Iteration) -> dict:
        eva = it.eva
        if not it.creator_on:
            # "prompts": the seed pool's folder name before it was `seed_pool` (fingerprints stay as they were)
            return {"pool": {"prompts": prompt_set_id(it.run, 0)}, "size": eva.prompts_per_iteration,
                    "split": split_index(it.run, it.t), "reuse_pool": eva.reuse_pool}
        config = {**it.upstream("evolved"), "evolved_fraction": eva.evolved_fraction, "seed": it.run.seed}
        if eva.buffer != "previous" or eva.creator_input != "previous":  # fingerprints of older runs hold
            config.update(buffer=eva.buffer, creator_input=eva.creator_input,
                          buffer_split=split_index(it.run, it.t))
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        if not it.creator_on:
            ds, stats = seed_split(it, split_index(it.run, it.t)), {"evolved_shortfall": 0, **split_stats(it)}
        else:
            ds, stats = mix_evolved(it)
        origin = list(ds["origin"])
        return StageResult(ds, {"origins": {o: origin.count(o) for o in sorted(set(origin))}, **stats})


def mix_evolved(it: Iteration) -> tuple[Dataset, dict]:
    """Kept evolved prompts mixed with the buffer, as many prompts as the creator's input had; a
    shortfall of evolved prompts is filled from the buffer and said once."""
    size, buffer = len(creator_input(it)), buffer_source(it)
    evolved = it.load("evolved")
    evolved = evolved.select([i for i, s in enumerate(evolved["status"]) if s == "kept"])
    plan = plan_mix(len(evolved), len(buffer), size, it.eva.evolved_fraction, it.rng("prompts"))
    if plan.shortfall:
        wanted = len(plan.evolved) + plan.shortfall
        logger.warning("iteration %d: %d evolved prompts survived, the mix wants %d (evolved_fraction %.2f of "
                       "%d); %d buffer prompts fill the gap", it.t, len(evolved), wanted,
                       it.eva.evolved_fraction, size, plan.shortfall)
    rows = [{"prompt_id": prompt_id(e["prompt"]), "prompt": e["prompt"], "origin": "evolved",
             "parent_id": e["parent_id"]} for e in evolved.select(plan.evolved)]
    rows += [{"prompt_id": b["prompt_id"], "prompt": b["prompt"], "origin": "buffer", "parent_id": ""}
             for b in buffer.select(plan.buffer)]
    return Dataset.from_list(rows), {"evolved_shortfall": plan.shortfall, "evolved_available": len(evolved),
                                     "buffer": it.eva.buffer}


class SolverSamples(Stage):
    """``solver_samples`` responses of π_{t-1} per prompt of X_t; the creator's scored samples stand in
    for buffer prompts when they were drawn the same way."""

    name, mode = "solver_samples", SHARED

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("prompts"), "n": it.eva.solver_samples, "policy": it.run.policy_id(it.t - 1),
                "reuse": it.upstream("creator_rewards") if can_reuse(it) else None,
                "generation": as_dict(it.eva.generation), "seed": it.run.seed}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        n = it.eva.solver_samples
        xt, reusable = it.load("prompts"), reusable_samples(it)
        todo = [i for i, r in enumerate(xt) if r["prompt_id"] not in reusable]
        texts, counts = it.sample([xt[i]["prompt"] for i in todo], n, self.name)
        fresh = dict(zip(todo, texts))
        responses, rewards, reused = [], [], []
        for i, row in enumerate(xt):
            old = reusable.get(row["prompt_id"]) if i not in fresh else None
            responses.append(fresh[i] if old is None else old["responses"][:n])
            rewards.append([] if old is None else old["rewards"][:n])
            reused.append(old is not None)
        ds = xt.add_column("responses", responses).add_column("reused_rewards", rewards)
        ds = ds.add_column("reused", reused)
        return StageResult(ds, {**counts, "generations": len(todo) * n,
                                "generations_saved": sum(reused) * n})


def can_reuse(it: Iteration) -> bool:
    """Whether this round's creator samples can stand in for solver samples (same policy and
    sampling, enough of them)."""
    eva = it.eva
    return (it.creator_on and eva.reuse_creator_samples and eva.num_samples >= eva.solver_samples
            and (it.run.store.path(it.t, "creator_rewards") / "data").exists())


def reusable_samples(it: Iteration) -> dict[str, dict]:
    """The creator samples and rewards by prompt id, where ``can_reuse``."""
    if not can_reuse(it):
        return {}
    return {r["prompt_id"]: {"responses": r["responses"], "rewards": r["rewards"]}
            for r in it.load("creator_rewards")}


class SolverRewards(Stage):
    """Rewards of the fresh solver samples. Reused creator samples keep the creator's rewards when one
    reward model scores for both; with a creator reward model of its own they are scored again here."""

    name, mode = "solver_rewards", SHARED

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("solver_samples"), **it.run.reward_config()}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        sampled = it.load("solver_samples")
        keep = it.eva.one_rewarder()  # the creator's rewards are this reward model's
        todo = [i for i, r in enumerate(sampled) if not (r["reused"] and keep)]
        # kept rewards were scored (and their non-finite ones counted) by creator_rewards
        scores, counts = it.score([sampled[i]["prompt"] for i in todo], [sampled[i]["responses"] for i in todo],
                                  "solver")
        fresh = dict(zip(todo, scores))
        rewards = [fresh.get(i, r["reused_rewards"]) for i, r in enumerate(sampled)]
        ds = sampled.remove_columns("reused_rewards").add_column("rewards", rewards)
        rescored = sum(1 for i in todo if sampled[i]["reused"])
        return StageResult(ds, {**counts, "reused_responses_rescored": rescored})


class Pairs(Stage):
    """Best/worst response of every prompt as a TRL preference pair; ties and identical pairs dropped."""

    name = "pairs"

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("solver_rewards"), **({"pairwise": True} if it.eva.reward_type == "pairwise" else {})}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        scored = it.load("solver_rewards")
        rows, stats = build_pairs(scored, pairwise=it.eva.reward_type == "pairwise")
        if not rows:
            raise PluginOutputError(no_pairs_message(it.t, stats, len(scored), it.eva.reward_type))
        ds = Dataset.from_list(rows)
        stats.update(mean_chosen_reward=float(np.mean(ds["chosen_reward"])),
                     mean_rejected_reward=float(np.mean(ds["rejected_reward"])))
        return StageResult(ds, stats)


class Rewritten(Stage):
    """The pairs with their chosen responses rewritten by the evolver LLM (where the rewrite is kept)."""

    name, mode = "rewritten", SHARED

    def generation(self, it: Iteration):
        ratio = it.eva.rewriter_max_length_ratio
        return dataclasses.replace(it.eva.evolver_generation,
                                   max_new_tokens=math.ceil(it.eva.generation.max_new_tokens * ratio))

    def config(self, it: Iteration) -> dict:
        return {**it.upstream("pairs"), "ratio": it.eva.rewriter_max_length_ratio,
                "llm": local_id(it.eva.evolver_model) or it.run.policy_id(it.t - 1),
                "generation": as_dict(self.generation(it))}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        it.make_room(it.evolver_llm)
        complete = Completions(it.evolver_llm, it.params(self.generation(it), self.name), it.run.runtime.shards,
                               cache=it.run.store.requests_dir(it.t, self.name))
        rows, counts = rewrite_pairs(it.load("pairs").to_list(), complete, it.eva.rewriter_max_length_ratio)
        return StageResult(Dataset.from_list(rows), {**complete.stats(), **counts})


class Policy(Stage):
    """π_t: one preference-optimisation round from π_{t-1} on the pairs (every process trains)."""

    name, mode = "policy", EVERY

    def source(self, it: Iteration) -> str:
        return "rewritten" if it.eva.rewriter else "pairs"

    def config(self, it: Iteration) -> dict:
        recipe = it.run.recipe
        reference = {"reference_model": it.run.policy_id(0)} if it.eva.reference == "initial" and it.t > 1 else {}
        return {**it.upstream(self.source(it)), "policy": it.run.policy_id(it.t - 1), "reference": it.eva.reference,
                **reference,
                "loss": it.eva.loss, "knobs": recipe.loss_knobs(), "training": training_config(recipe.training),
                "model": dataclasses.asdict(recipe.model)}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        from eva_plugin.solver.training import train_round

        # in memory: the trainer's tokenising map must not write cache files into the artifact
        pairs = it.load(self.source(it), keep_in_memory=True)
        recipe = it.run.recipe
        try:
            stats = train_round(pairs, policy_path=it.run.policy_path(it.t - 1),
                                reference_path=it.run.reference_path(it.t), training=recipe.training,
                                model_args=recipe.model, save_dir=tmp, loss=it.eva.loss, knobs=recipe.loss_knobs(),
                                attach=lambda trainer: it.run.tracker.attach(trainer, it.t),
                                barrier=it.run.runtime.shards.barrier)
        except TrainingError as err:  # nothing published; the stages before it are kept
            raise TrainingError(f"iter_{it.t}/policy not published: {err}") from None
        shutil.rmtree(tmp / "trainer_state", ignore_errors=True)
        return StageResult(None, {"rows": len(pairs), **stats},
                           note=f"trained on {len(pairs)} pairs (loss {stats['train_loss']:.4f})")


#: DPOConfig keys that do not change the trained weights (where and how a run reports).
_NOT_TRAINING = ("output_dir", "logging", "log_", "report_to", "run_name", "hub_", "push_to_hub", "save_",
                 "eval_", "per_device_eval", "do_eval", "do_predict", "disable_tqdm", "local_rank",
                 "resume_from_checkpoint", "dataloader_num_workers", "include_", "skip_memory_metrics",
                 "trackio", "project", "print_")


def training_config(training) -> dict:
    """The trainer settings that decide the weights (for the policy's fingerprint)."""
    return {k: v for k, v in training.to_dict().items() if not k.startswith(_NOT_TRAINING)}
