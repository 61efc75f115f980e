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

The stages and their order are declared once, in ``stage_list.py``; ``runtime.py`` runs each
stage once per output dir across the processes of the launch.
"""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin.artifacts import StageStore
from eva_plugin.context import Iteration, Run
from eva_plugin.locking import run_lock
from eva_plugin.prompt_sets import SeedPool, check_prompts_fit, check_supply
from eva_plugin.runtime import IterationReport, StageRuntime
from eva_plugin.shared_folder import check_shared_folder
from eva_plugin.stage_list import AFTER, CREATOR, SETUP, SOLVER, TRAIN, Plan, plan_of


class EvaLoop:
    """Runs ``recipe.eva.iterations`` rounds; ``stop_after`` ends the run after one stage (tests, debugging)."""

    def __init__(self, recipe, *, log: Callable[[str], None] = print, overwrite_stale: bool = False,
                 stop_after: str | None = None) -> None:
        from eva_plugin.modeling import process_state
        from eva_plugin.sharding import wait_timeout

        self.state = process_state(recipe.training.use_cpu)  # `accelerate launch --cpu` → CPU everywhere
        store = StageStore(recipe.output_dir, overwrite_stale=overwrite_stale)
        timeout = wait_timeout(recipe.eva.collective_timeout, recipe.training.ddp_timeout)
        self.runtime = StageRuntime(store, self.state, log=log, stop_after=stop_after, timeout=timeout,
                                    chunk_size=recipe.eva.chunk_size)
        self.run_facts = Run(recipe, self.runtime)
        self.plan: Plan = plan_of(recipe)

    @property
    def reports(self) -> list[IterationReport]:
        return self.runtime.reports

    def run(self) -> list[IterationReport]:
        facts = self.run_facts
        facts.store.root.mkdir(parents=True, exist_ok=True)
        with run_lock(facts.store.root, self.runtime.is_main), facts.tracker:  # one run per output dir
            check_shared_folder(self.runtime, facts.store.root)  # every process (every node) sees this folder
            self.runtime.on_main(lambda: facts.store.rename_legacy(0))  # run folders written before a rename
            self.runtime.begin(0)
            setup = Iteration(facts, 0)
            made = {spec.name: setup.do(spec.build()) for spec in self.plan.stages(0, SETUP)}
            check_supply(facts, made[SeedPool.name])  # enough seed prompts for every round
            check_prompts_fit(facts, made[SeedPool.name])  # a policy context that holds them
            self.after_round(0)  # π_0 on the held-out prompts; the seed pool judged
            for t in range(1, facts.eva.iterations + 1):
                self.runtime.begin(t)
                self.round(Iteration(facts, t))
                self.after_round(t)
            self.runtime.write_iteration_manifests(facts.creator)
        return self.reports

    def round(self, it: Iteration) -> None:
        """The creator's and the solver's stages (``stage_list``), then training with their models freed."""
        try:
            for spec in self.plan.stages(it.t, CREATOR) + self.plan.stages(it.t, SOLVER):
                it.do(spec.build())
        finally:
            it.close()  # every process frees its sampling and reward models before training
        for spec in self.plan.stages(it.t, TRAIN):
            it.do(spec.build())  # θ_t ← preference optimisation from θ_{t-1}

    def after_round(self, t: int) -> None:
        """The stages that look at round ``t``'s result with models of their own (each freed after it),
        then the trackers' per-iteration numbers."""
        facts = self.run_facts
        for spec in self.plan.stages(t, AFTER):
            stage = spec.build()
            it = stage.iteration(facts, t)
            try:
                it.do(stage)
            finally:
                it.close()
        facts.tracker.log_iteration(t)  # report_to: eva/* at the step that ended round t's training
