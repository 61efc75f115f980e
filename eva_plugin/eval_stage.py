"""Held-out evaluation (``iter_<t>/eval``): π_t answers the held-out prompts, the run's reward model scores them.

``iter_0/eval`` is the initial policy, ``iter_t/eval`` the policy trained in round t. Every round
samples with the same seed (the ``eval`` purpose of iteration 0), so differences between rounds
come from the policy; ``eval_temperature`` 0 answers greedily. The manifest holds ``mean_reward``
(over prompts of the per-prompt mean), its standard error ``stderr``, ``win_rate`` against the
initial policy's answers on the same prompts (per-prompt means compared, ties half; 0.5 at
iteration 0) and ``prompts``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from datasets import Dataset

from eva_plugin.artifacts import StageResult
from eva_plugin.context import Iteration, Run, Stage, as_dict
from eva_plugin.generation import SamplingParams
from eva_plugin.prompt_sets import EvalPrompts
from eva_plugin.runtime import SHARED
from eva_plugin.stats import mean_stderr, paired_difference


class EvalRound(Iteration):
    """The models of iteration ``t``'s evaluation: the sampler is π_t, the policy trained in round t
    (``run.policy_path(t)``; the initial model at t = 0), not the π_{t-1} a round samples with."""

    def __init__(self, run: Run, t: int) -> None:
        super().__init__(run, t)
        self.sample_with(run.policy_path(t), run.eva.generation)

    def params(self, gen, purpose: str) -> SamplingParams:
        params = self.run.params(gen, 0, purpose)  # one seed for every round: only the policy differs
        if self.eva.eval_temperature is not None:
            params = dataclasses.replace(params, temperature=self.eva.eval_temperature)
        return params


class Eval(Stage):
    """``iter_<t>/eval``: ``eval_samples`` answers of π_t per held-out prompt, their rewards and summary."""

    name, mode = "eval", SHARED

    def iteration(self, run: Run, t: int) -> Iteration:
        return EvalRound(run, t)

    def config(self, it: Iteration) -> dict:
        config = {**it.run.upstream(0, EvalPrompts.name), "size": it.eva.eval_size, "n": it.eva.eval_samples,
                  "policy": it.run.policy_id(it.t), "generation": as_dict(it.eva.generation),
                  **it.run.reward_config("creator"), "seed": it.run.seed}
        if it.eva.eval_temperature is not None:
            config["temperature"] = it.eva.eval_temperature
        if it.t > 0:  # the win rate compares with the initial policy's answers
            config["initial"] = it.run.upstream(0, self.name)[self.name]
        return config

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        held = it.run.store.load(0, EvalPrompts.name)
        if it.eva.eval_size is not None and it.eva.eval_size < len(held):
            held = held.select(range(it.eva.eval_size))
        prompts = list(held["prompt"])
        responses, counts = it.sample(prompts, it.eva.eval_samples, self.name)
        rewards, scored = it.score(prompts, responses, "eval", role="creator")
        means = [prompt_mean(rs) for rs in rewards]
        initial = None
        if it.t > 0:
            first = it.run.store.load(0, self.name)
            initial = dict(zip(first["prompt_id"], first["mean_reward"]))
        ds = Dataset.from_dict({"prompt_id": list(held["prompt_id"]), "prompt": prompts, "responses": responses,
                                "rewards": rewards, "mean_reward": means})
        stats = {**reward_summary(list(held["prompt_id"]), means, initial), **counts,
                 "nonfinite_rewards": scored["nonfinite_rewards"]}
        note = f"mean reward {fmt(stats['mean_reward'])} ± {fmt(stats['stderr'])}, win rate {fmt(stats['win_rate'])}"
        return StageResult(ds, stats, note=note)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def prompt_mean(rewards: list[float]) -> float:
    """The mean of a prompt's finite rewards (NaN when none is finite)."""
    finite = [float(r) for r in rewards if math.isfinite(float(r))]
    return float(np.mean(finite)) if finite else math.nan


def reward_summary(ids: list[str], means: list[float], initial: dict[str, float] | None) -> dict:
    """``mean_reward`` and ``stderr`` over the prompts with a finite mean; ``win_rate`` against ``initial``
    (per prompt: 1 better, 0.5 tie, 0 worse; prompts without a finite reward on either side are left out);
    None where nothing is left to average."""
    mean, stderr = mean_stderr(means)
    win_rate = 0.5 if initial is None else paired_difference(dict(zip(ids, means)), initial)["win_rate"]
    return {"prompts": len(ids), "mean_reward": mean, "stderr": stderr, "win_rate": win_rate}

