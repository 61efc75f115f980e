"""The EVA loop (Algorithm 1 of arXiv 2411.00062): which stage follows which, nothing else.

    X_0 ← seed prompts
    for t = 1 … T:
        [held-out eval of π_0]
        creator (``creator: eva``, after ``warmup_iterations`` plain rounds):
                   sample π_{t-1} on X_{t-1} (or a fresh seed split), reward, info(x) by the
                   proxy, select the informative subset, evolve it
        solver:    X_t ← evolved + buffer (or the next seed split in a plain round),
                   sample π_{t-1} on X_t, reward, best/worst pairs [, rewrite the chosen], train π_t
        [held-out eval of π_t (``eval_stage.py``)]
        [complexity and quality of X_t by an LLM judge (``judge.py``; X_0 = the seed pool)]

Each stage is a class in ``creator/stages.py``, ``solver/stages.py`` or ``prompt_sets.py``;
``runtime.py`` runs it once per output dir across the processes of the launch.
"""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin.artifacts import StageStore
from eva_plugin.context import Iteration, Run
from eva_plugin.creator import stages as creator
from eva_plugin.eval_stage import evaluate
from eva_plugin.judge import judge
from eva_plugin.locking import run_lock
from eva_plugin.prompt_sets import EvalPrompts, SeedPool, check_supply, eval_on
from eva_plugin.runtime import IterationReport, StageRuntime
from eva_plugin.solver import stages as solver

CREATOR_STAGES = ("creator_samples", "creator_rewards", "scores", "selected", "evolved")
SOLVER_STAGES = ("prompts", "solver_samples", "solver_rewards", "pairs", "policy")


def stages_for(creator_name: str, rewriter: bool = False) -> tuple[str, ...]:
    """The stage folders one iteration writes, in order."""
    tail = ("rewritten", "policy") if rewriter else ("policy",)
    return (CREATOR_STAGES if creator_name == "eva" else ()) + SOLVER_STAGES[:-1] + tail


class EvaLoop:
    """Runs ``recipe.eva.iterations`` rounds; ``stop_after`` ends the run after one stage (tests, debugging)."""

    def __init__(self, recipe, *, log: Callable[[str], None] = print, overwrite_stale: bool = False,
                 stop_after: str | None = None) -> None:
        from eva_plugin.modeling import process_state

        self.state = process_state(recipe.training.use_cpu)  # `accelerate launch --cpu` → CPU everywhere
        store = StageStore(recipe.output_dir, overwrite_stale=overwrite_stale)
        self.runtime = StageRuntime(store, self.state, log=log, stop_after=stop_after)
        self.run_facts = Run(recipe, self.runtime)

    @property
    def reports(self) -> list[IterationReport]:
        return self.runtime.reports

    def run(self) -> list[IterationReport]:
        facts = self.run_facts
        facts.store.root.mkdir(parents=True, exist_ok=True)
        with run_lock(facts.store.root, self.runtime.is_main), facts.tracker:  # one run per output dir
            self.runtime.begin(0)
            evaluating = eval_on(facts)  # eva.eval_prompts, or the recipe's test_split_size
            if evaluating:
                Iteration(facts, 0).do(EvalPrompts())  # held-out prompts, never trained on
            pool = Iteration(facts, 0).do(SeedPool())  # the shuffled seed pool; X_0 is its first split
            check_supply(facts, len(pool))  # enough seed prompts for every round, before any model loads
            judging = facts.eva.judge_model is not None
            if judging:
                judge(facts, 0)  # iter_0/judged: complexity and quality of the seed prompts (§E.1)
            if evaluating:
                evaluate(facts, 0)  # iter_0/eval: the initial policy π_0 on the held-out prompts
            facts.tracker.log_iteration(0)  # report_to: π_0's eval, at step 0
            for t in range(1, facts.eva.iterations + 1):
                self.runtime.begin(t)
                self.iteration(Iteration(facts, t))
                if judging:
                    judge(facts, t)  # iter_t/judged: complexity and quality of X_t
                if evaluating:  # iter_t/eval: π_t, just trained (its own sampler, freed after)
                    evaluate(facts, t)
                facts.tracker.log_iteration(t)  # report_to: eva/* at the step that ended round t's training
            self.runtime.write_iteration_manifests(facts.creator)
        return self.reports

    def iteration(self, it: Iteration) -> None:
        try:
            if it.creator_on:                    # creator: eva, after the warm-up rounds
                it.do(creator.CreatorSamples())  # y_1..y_n ~ π_{t-1}(·|x) for x in X_{t-1}
                it.do(creator.CreatorRewards())  # r(x, y_i)
                it.do(creator.Scores())          # info(x) by the proxy → weights
                it.do(creator.Selected())        # the informative subset
                it.do(creator.Evolved())         # x' ← evolve(x)
            it.do(solver.Prompts())              # X_t ← evolved + buffer
            it.do(solver.SolverSamples())        # y_1..y_k ~ π_{t-1}(·|x) for x in X_t
            it.do(solver.SolverRewards())        # r(x, y_i)
            it.do(solver.Pairs())                # (x, y+, y−) = best / worst
            if it.eva.rewriter:
                it.do(solver.Rewritten())        # y+ ← rewrite(y+)
        finally:
            it.close()  # every process frees its sampling and reward models before training
        it.do(solver.Policy())                   # θ_t ← preference optimisation from θ_{t-1}
