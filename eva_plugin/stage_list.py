"""The stages of a run, in the order they run: one declaration for the loop, ``--stop_after``,
``eva report`` and the docs' artifact table.

Each ``StageSpec`` names the folder a stage writes (``iter_<t>/<name>/``), the class that does the
work (imported only when the loop runs it), the phase it belongs to, when it runs (``when``) and
the columns it gives the report's summary table. This module imports nothing heavy, so reports
and ``--help`` can read it.

Phases, in order: ``setup`` (iteration 0 only), ``creator`` and ``solver`` (every round, the
creator only with ``creator: eva`` after the warm-up rounds), ``train`` (the models used for
sampling and scoring are freed before it), ``after`` (held-out evaluation and the prompt judge,
each with its own models, in iteration 0 too).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SETUP, CREATOR, SOLVER, TRAIN, AFTER = "setup", "creator", "solver", "train", "after"
PHASES = (SETUP, CREATOR, SOLVER, TRAIN, AFTER)

#: ``when`` values: the recipe settings under which a stage runs.
ALWAYS, EVALUATING, JUDGING, REWRITING = "always", "evaluating", "judging", "rewriting"

#: A summary-table column: its header and how it reads one iteration's manifests (stage → manifest).
Column = tuple[str, Callable[[dict[str, dict]], Any]]

EVOLVED_STATUSES = ("kept", "empty", "truncated", "unusable", "too_short", "too_long", "refusal", "duplicate",
                    "near_duplicate")


def _kept(evolved: dict | None) -> str | None:
    if not evolved:
        return None
    dropped = sum(evolved.get(k, 0) for k in EVOLVED_STATUSES if k != "kept")
    return f"{evolved.get('kept', 0)}/{dropped}"


def _field(stage: str, key: str) -> Callable[[dict[str, dict]], Any]:
    return lambda manifests: (manifests.get(stage) or {}).get(key)


@dataclass(frozen=True)
class StageSpec:
    """One stage folder: ``name``, its class (``"module:Class"``), phase, when it runs, what it holds."""

    name: str
    target: str
    phase: str
    holds: str
    when: str = ALWAYS
    columns: tuple[Column, ...] = field(default=())
    #: an older name of the folder, still read by ``eva report`` (and moved on resume)
    legacy_name: str | None = None

    def build(self) -> Any:
        """A new instance of the stage class."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)()


STAGES: tuple[StageSpec, ...] = (
    StageSpec("eval_prompts", "eva_plugin.prompt_sets:EvalPrompts", SETUP,
              "the held-out evaluation prompts, never trained on", when=EVALUATING),
    StageSpec("seed_pool", "eva_plugin.prompt_sets:SeedPool", SETUP,
              "the shuffled seed prompts; X_0 is their first split (`splits: ordered`: dataset by dataset, each "
              "shuffled; the manifest's `seed_splits` says which round takes which)", legacy_name="prompts"),
    StageSpec("creator_samples", "eva_plugin.creator.stages:CreatorSamples", CREATOR,
              "n responses of π_{t-1} per prompt of the creator's input (X_{t-1} or a fresh split)"),
    StageSpec("creator_rewards", "eva_plugin.creator.stages:CreatorRewards", CREATOR,
              "their rewards", columns=(("scored", _field("creator_rewards", "rows")),)),
    StageSpec("scores", "eva_plugin.creator.stages:Scores", CREATOR,
              "informativeness (the proxy) and the sampling weight of every prompt",
              columns=(("mean info", _field("scores", "mean_info")),)),
    StageSpec("selected", "eva_plugin.creator.stages:Selected", CREATOR,
              "the informative subset", columns=(("selected", _field("selected", "selected")),)),
    StageSpec("evolved", "eva_plugin.creator.stages:Evolved", CREATOR,
              "every evolution attempt with its parent, mutation, step and kept/dropped reason",
              columns=(("evolved kept/dropped", lambda m: _kept(m.get("evolved"))),)),
    StageSpec("prompts", "eva_plugin.solver.stages:Prompts", SOLVER,
              "X_t: evolved prompts + buffer (a plain round: the next seed split), with `origin`",
              columns=(("prompts", _field("prompts", "rows")),)),
    StageSpec("solver_samples", "eva_plugin.solver.stages:SolverSamples", SOLVER,
              "k responses of π_{t-1} per prompt of X_t (buffer prompts may reuse the creator's)"),
    StageSpec("solver_rewards", "eva_plugin.solver.stages:SolverRewards", SOLVER, "their rewards"),
    StageSpec("pairs", "eva_plugin.solver.stages:Pairs", SOLVER,
              "best/worst preference pairs in TRL's format, with their rewards",
              columns=(("pairs", _field("pairs", "pairs")), ("chosen r", _field("pairs", "mean_chosen_reward")),
                       ("rejected r", _field("pairs", "mean_rejected_reward")))),
    StageSpec("rewritten", "eva_plugin.solver.stages:Rewritten", SOLVER,
              "the pairs with the chosen response rewritten", when=REWRITING),
    StageSpec("policy", "eva_plugin.solver.stages:Policy", TRAIN, "π_t, the checkpoint trained on the pairs",
              columns=(("dpo loss", _field("policy", "train_loss")),
                       ("reward acc", _field("policy", "reward_accuracy")))),
    StageSpec("judged", "eva_plugin.judge:Judged", AFTER,
              "complexity and quality ratings of the seed pool (iteration 0) or X_t by an LLM judge",
              when=JUDGING),
    StageSpec("eval", "eva_plugin.eval_stage:Eval", AFTER,
              "π_t's answers to the held-out prompts, their rewards and win rate vs π_0", when=EVALUATING),
)

#: What each stage's ``data/`` folder holds (docs/run-folder.md's table).
DATA_COLUMNS = {
    "eval_prompts": "`prompt_id`, `prompt`, from `eva.eval_prompts` or the recipe's `test_split_size` share of "
                    "the seed prompts",
    "seed_pool": "`prompt_id`, `prompt`, `source` and the source's other columns (e.g. `category`); `splits: "
                 "ordered` adds `dataset` (its position in the mixture)",
    "creator_samples": "`prompt_id`, `prompt`, `origin`, `responses`",
    "creator_rewards": "the same + `rewards`",
    "scores": "`prompt_id`, `prompt`, `info` (the proxy value), `weight`",
    "selected": "rows of `scores`",
    "evolved": "`prompt`, `parent_id`, `mutation`, `step`, `status` ("
               + " / ".join(EVOLVED_STATUSES) + "), `raw`",
    "prompts": "`prompt_id`, `prompt`, `origin` (evolved / buffer / seed), `parent_id`",
    "solver_samples": "the rows of `prompts` + `responses`, `reused` (taken from the creator), "
                      "`reused_rewards`",
    "solver_rewards": "the same with `rewards` (fresh and reused) in place of `reused_rewards`",
    "pairs": "TRL conversational `prompt`, `chosen`, `rejected` + `chosen_reward`, `rejected_reward`",
    "rewritten": "the pairs with `chosen` rewritten where kept, `chosen_original`, `rewrite_status`",
    "policy": "a normal Hugging Face checkpoint folder; manifest: loss, reward accuracy, the reference used",
    "judged": "`prompt_id`, `prompt`, `origin`, `complexity`, `quality` (1–5, null when the reply held no "
              "rating) and the judge's replies; manifest: `mean_`/`stderr_`/`unrated_` per scale, `by_origin`",
    "eval": "`prompt_id`, `prompt`, `responses`, `rewards`, `mean_reward`; manifest: `mean_reward`, `stderr`, "
            "`win_rate`, `prompts`",
}

#: Summary columns that come from a stage listed after the one they describe.
EXTRA_COLUMNS: tuple[Column, ...] = (("gens saved", _field("solver_samples", "generations_saved")),)

BY_NAME = {spec.name: spec for spec in STAGES}
ORDER = tuple(spec.name for spec in STAGES)
#: fingerprint config keys renamed since runs were made (stage → {key now: key then}): a finished
#: stage whose manifest matches the config under the old keys is reused, not called stale
CONFIG_RENAMES = {"selected": {"subset_fraction": "fraction"}, "prompts": {"evolved_fraction": "fraction"}}

#: legacy folder name → current name (``eva report`` reads old run folders)
LEGACY_NAMES = {spec.legacy_name: spec.name for spec in STAGES if spec.legacy_name}


def summary_columns() -> list[Column]:
    """The report's summary table: the iteration, then each stage's columns in stage order."""
    return [("iter", lambda m: m["_iteration"]), *(c for spec in STAGES for c in spec.columns), *EXTRA_COLUMNS]


@dataclass(frozen=True)
class Plan:
    """Which settings of a recipe turn optional stages on."""

    creator: str  # "eva" | "none"
    rewriting: bool = False
    evaluating: bool = False
    judging: bool = False
    warmup_iterations: int = 0

    def on(self, spec: StageSpec) -> bool:
        return {ALWAYS: True, EVALUATING: self.evaluating, JUDGING: self.judging,
                REWRITING: self.rewriting}[spec.when]

    def creator_on(self, t: int) -> bool:
        return self.creator == "eva" and t > self.warmup_iterations

    def stages(self, t: int, phase: str | None = None) -> list[StageSpec]:
        """The stages iteration ``t`` runs, in order (``phase``: only that phase's)."""
        phases = (SETUP, AFTER) if t == 0 else (CREATOR, SOLVER, TRAIN, AFTER) if self.creator_on(t) \
            else (SOLVER, TRAIN, AFTER)
        return [s for s in STAGES if s.phase in phases and (phase is None or s.phase == phase) and self.on(s)]

    def stage_paths(self, iterations: int) -> list[str]:
        """Every ``iter_<t>/<stage>`` a run of ``iterations`` rounds writes, in order."""
        return [f"iter_{t}/{s.name}" for t in range(iterations + 1) for s in self.stages(t)]


def round_stages(creator: str = "eva", rewriting: bool = False) -> list[str]:
    """The folders one round writes (without evaluation or judging), in order."""
    return [s.name for s in Plan(creator, rewriting=rewriting).stages(1) if s.phase != AFTER]


def plan_of(recipe) -> Plan:
    """The ``Plan`` of a parsed recipe (``eva_plugin.recipe.Recipe``)."""
    eva = recipe.eva
    return Plan(creator=recipe.creator or "none", rewriting=eva.rewriter,
                evaluating=bool(eva.eval_prompts) or bool(recipe.test_split_size),
                judging=eva.judge_model is not None, warmup_iterations=eva.warmup_iterations)
