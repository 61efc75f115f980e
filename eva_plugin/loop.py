"""The iteration loop: creator (score → select → evolve → mix), solver (generate → reward → pairs → train).

Every stage goes through ``StageStore.run``, so a re-run skips finished stages, and a
changed config that invalidates a finished stage is reported instead of silently reused.
Under ``accelerate launch`` with several processes, the stages that sample or score split
their prompts across the processes (``eva_plugin.sharding``), the main process writes every
artifact and the others read it back; the cheap bookkeeping stages run on the main process
only; every process trains.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset

from eva_plugin import plugins
from eva_plugin.artifacts import (
    MANIFEST,
    StageResult,
    StageStore,
    fingerprint,
    publish_dir,
    write_json_atomic,
)
from eva_plugin.creator import hygiene
from eva_plugin.creator.evolvers import STATUSES, Truncated
from eva_plugin.creator.mixing import plan_mix
from eva_plugin.creator.proxies import weights as proxy_weights
from eva_plugin.data import load_prompts, prompt_id, user_turn
from eva_plugin.generation import SamplingParams
from eva_plugin.generation.seeding import derive_seed
from eva_plugin.recipe import Recipe
from eva_plugin.sharding import Shards, accepts, announced
from eva_plugin.sharding import generate as shared_generate
from eva_plugin.sharding import score as shared_score
from eva_plugin.solver.pairs import build_pairs
from eva_plugin.solver.rewriter import rewrite_pairs
from eva_plugin.solver.training import train_round

logger = logging.getLogger(__name__)

CREATOR_STAGES = ("creator_samples", "creator_rewards", "scores", "selected", "evolved")
SOLVER_STAGES = ("prompts", "solver_samples", "solver_rewards", "pairs", "policy")


def stages_for(creator: str, rewriter: bool = False) -> tuple[str, ...]:
    solver = SOLVER_STAGES if not rewriter else (*SOLVER_STAGES[:-1], "rewritten", SOLVER_STAGES[-1])
    return (CREATOR_STAGES if creator == "eva" else ()) + solver


@dataclass
class IterationReport:
    iteration: int
    manifests: dict[str, dict] = field(default_factory=dict)


class _Lazy:
    """Build an object on first use; ``close()`` releases it (models before training)."""

    def __init__(self, build: Callable[[], object]) -> None:
        self._build, self._obj = build, None

    def get(self):
        if self._obj is None:
            self._obj = self._build()
        return self._obj

    def close(self) -> None:
        if self._obj is not None:
            self._obj.close()
            self._obj = None


def length_penalised(rewards: list[list[float]], responses: list[list[str]], penalty: float) -> list[list[float]]:
    """r − λ·|y| with |y| in characters (RLHF Workflow); λ = 0 returns the rewards unchanged."""
    if not penalty:
        return rewards
    return [[r - penalty * len(y) for r, y in zip(rs, ys)] for rs, ys in zip(rewards, responses)]


class _Completions:
    """One completion per instruction from an LLM (evolver, rewriter), counting tokens and failures;
    the instructions are shared across the processes."""

    def __init__(self, llm: _Lazy, params: SamplingParams, shards: Shards) -> None:
        self.llm, self.params, self.shards = llm, params, shards
        self.tokens = self.failed = self.calls = 0

    def __call__(self, instructions: list[str]) -> tuple[list[str], list[bool]]:
        """Texts and whether each ended on its own (True where the backend cannot tell). Each call
        samples afresh: an instruction sent again in a later call (a failed rewrite retried with
        the same mutation) gets a new seed."""
        backend = self.shards.together(self.llm.get)
        params = dataclasses.replace(self.params, seed=derive_seed(self.params.seed, "call", self.calls))
        self.calls += 1
        gens = shared_generate(self.shards, backend, [user_turn(i) for i in instructions], 1, params)
        self.tokens += gens.num_tokens
        self.failed += gens.failed
        done = gens.finished or [[True]] * len(gens.texts)
        return [texts[0] if texts else "" for texts in gens.texts], [ok[0] for ok in done]

    def stats(self) -> dict[str, int]:
        return {"tokens_generated": self.tokens, "llm_failures": self.failed}


class EvaLoop:
    """Runs ``recipe.eva.iterations`` rounds; ``stop_after`` ends the run after one stage (tests, debugging)."""

    def __init__(self, recipe: Recipe, *, log: Callable[[str], None] = print, overwrite_stale: bool = False,
                 stop_after: str | None = None) -> None:
        from accelerate import PartialState

        self.recipe = recipe
        self.eva = recipe.eva
        self.creator = recipe.creator or "none"
        self.root = recipe.output_dir
        self.store = StageStore(self.root, overwrite_stale=overwrite_stale)
        self.log = log
        self.state = PartialState()
        self.shards = Shards(self.state)
        self.seed = self.eva.seed if self.eva.seed is not None else recipe.training.seed
        self.stop_after = stop_after
        self.reports: list[IterationReport] = []

    # ---- helpers -------------------------------------------------------------------------
    def rng(self, iteration: int, stage: str) -> np.random.Generator:
        """A local RNG per (iteration, stage): reproducible and independent of stage order."""
        return np.random.default_rng([self.seed, iteration, sum(stage.encode())])

    def params(self, gen, iteration: int, salt: int = 0) -> SamplingParams:
        return SamplingParams(temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                              seed=self.seed * 1000 + iteration * 10 + salt)

    def policy_path(self, iteration: int) -> str:
        """The checkpoint that samples in ``iteration`` (its predecessor's trained policy)."""
        if iteration <= 1:
            return str(self.recipe.model.model_name_or_path)
        return str(self.store.path(iteration - 1, "policy"))

    def policy_id(self, iteration: int) -> str:
        if iteration <= 1:
            return str(self.recipe.model.model_name_or_path)
        return (self.store.manifest(iteration - 1, "policy") or {}).get("fingerprint", "missing")

    def device_options(self, factory: Callable, options: dict) -> dict:
        """Backend / reward-model options with this process's device, for factories that take one
        (the recipe's own ``device`` wins)."""
        return {"device": str(self.state.device), **options} if accepts(factory, "device") else dict(options)

    def backend(self, model_path: str, gen) -> object:
        factory = plugins.get("backends", gen.backend)
        dtype = gen.dtype or self.recipe.model.dtype
        return factory(model_path, batch_size=gen.batch_size, dtype=dtype,
                       trust_remote_code=self.recipe.training.trust_remote_code,
                       **self.device_options(factory, gen.options))

    def reward_model(self) -> object:
        factory = plugins.get("reward_models", self.eva.reward_type)
        return factory(self.eva.reward_model, **self.device_options(factory, self.eva.reward_options))

    def upstream(self, iteration: int, *stages: str) -> dict[str, str]:
        return {s: (self.store.manifest(iteration, s) or {}).get("fingerprint", "") for s in stages}

    def stage(self, iteration: int, name: str, config: dict, fn: Callable[[Path], StageResult], *,
              collective: bool = False):
        """Run one stage through the store and return its dataset on every process.

        ``fn`` runs on the main process, or with ``collective`` on every process (it shares its
        sampling or scoring through ``self.shards``); either way the main process writes the
        artifact and the other processes read it back.
        """
        if self.state.num_processes == 1:
            data, manifest = self.store.run(iteration, name, config, fn, log=self.log)
        else:
            data, manifest = self._stage_across_processes(iteration, name, config, fn, collective)
        self.reports[-1].manifests[name] = manifest
        self.maybe_stop(iteration, name)
        return data

    def _stage_across_processes(self, iteration: int, name: str, config: dict, fn, collective: bool):
        """One stage on several processes.

        A main-only stage: the main process runs it and broadcasts the outcome. A collective
        stage: every process runs ``fn``; a failure that every process already knows about
        (raised after a shared gather, or after ``fn`` finished, when no gather is left) meets
        the others at the outcome broadcast; any other failure leaves at once — the others may
        still be waiting in a gather, and the launcher (torchrun) stops them when this process
        exits, rather than every process waiting for the collective timeout.
        """
        main = self.state.is_main_process
        done = self.on_main(lambda: self.store.is_done(iteration, name, config), share=True)
        if not collective:
            held: list = [None]

            def run_and_keep() -> None:
                held[0] = self.store.run(iteration, name, config, fn, log=self.log)

            self.on_main(run_and_keep if main else (lambda: None))
            return held[0] if main else self._read_back(iteration, name, done)
        finished = [False]

        def tracked(tmp: Path) -> StageResult:
            """``fn``, noting that it finished and how many items each process worked on."""
            self.shards.reset_counts()
            result = fn(tmp)
            result.stats["items_per_process"] = list(self.shards.items)
            finished[0] = True
            return result

        outcome, error = None, None
        try:
            if main:
                outcome = self.store.run(iteration, name, config, tracked, log=self.log)
            elif not done:
                with tempfile.TemporaryDirectory() as scratch:  # the main process publishes
                    tracked(Path(scratch))
        except Exception as err:
            if not (announced(err) or finished[0]):
                raise
            error = err
        status = ("ok", None) if error is None else ("error", f"{type(error).__name__}: {error}")
        status = self.shards.broadcast(status)
        if error is not None:
            raise error
        if status[0] == "error":
            raise RuntimeError(f"the main process failed: {status[1]}")
        return outcome if main else self._read_back(iteration, name, done)

    def _read_back(self, iteration: int, name: str, done: bool) -> tuple[Dataset | None, dict]:
        """On a non-main process: the artifact the main process wrote (or had written before)."""
        if done:
            self.store.skipped.append(f"iter_{iteration}/{name}")
        final = self.store.path(iteration, name)
        data = self.store.load(iteration, name) if (final / "data").exists() else None
        return data, self.store.manifest(iteration, name) or {}

    def maybe_stop(self, iteration: int, name: str) -> None:
        """Stop after ``name`` if asked (``STAGE`` = its first run in iteration >= 1, or ``iter_T/STAGE``);
        a stage skipped as already done never stops the run, so rerunning the command moves on."""
        where = f"iter_{iteration}/{name}"
        asked = self.stop_after == where or (self.stop_after == name and iteration >= 1)
        if asked and where not in self.store.skipped:
            raise StopAfterStage(where)

    def on_main(self, fn: Callable[[], object], *, share: bool = False):
        """Run ``fn`` on the main process only; the others learn whether it finished, stopped or
        failed, and with ``share`` its (small, picklable) value."""
        outcome: list = [("ok", None)]
        error: BaseException | None = None
        if self.state.is_main_process:
            try:
                value = fn()
                outcome = [("ok", value if share else None)]
            except StopAfterStage as stop:
                outcome, error = [("stop", stop.args[0])], stop
            except BaseException as err:  # tell the other ranks before re-raising
                outcome, error = [("error", f"{type(err).__name__}: {err}")], err
        if self.state.num_processes > 1:
            outcome = [self.shards.broadcast(outcome[0])]
        if error is not None:
            raise error
        kind, detail = outcome[0]
        if kind == "stop":
            raise StopAfterStage(detail)
        if kind == "error":
            raise RuntimeError(f"the main process failed: {detail}")
        return detail

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> list[IterationReport]:
        self.root.mkdir(parents=True, exist_ok=True)
        self.reports.append(IterationReport(0))
        self.seed_prompts()
        for t in range(1, self.eva.iterations + 1):
            self.reports.append(IterationReport(t))
            self.iteration(t)
        self.write_run_manifest()
        return self.reports

    def seed_prompts(self) -> Dataset:
        """``iter_0/prompts``: the seed pool, shuffled with the run seed (X_0 is its head)."""
        r = self.recipe
        specs = [dataclasses.asdict(s) for s in r.datasets]
        config = {"datasets": specs, "column": self.eva.prompt_column, "seed": self.seed,
                  "mixture_seed": r.mixture_seed}

        def make(_: Path) -> StageResult:
            pool = load_prompts(r.datasets, self.eva.prompt_column, seed=r.mixture_seed).shuffle(seed=self.seed)
            return StageResult(pool.flatten_indices(), {"pool_size": len(pool)})

        return self.stage(0, "prompts", config, make)

    def set_size(self, pool: Dataset) -> int:
        return min(self.eva.prompts_per_iteration or len(pool), len(pool))

    def iteration(self, t: int) -> None:
        policy = _Lazy(lambda: self.backend(self.policy_path(t), self.eva.generation))
        rewarder = _Lazy(self.reward_model)
        own_evolver = self.eva.evolver_model is not None or (
            self.eva.evolver_generation.backend != self.eva.generation.backend)
        evolver_llm = _Lazy(lambda: self.backend(self.eva.evolver_model or self.policy_path(t),
                                                  self.eva.evolver_generation)) if own_evolver else policy

        try:
            if self.creator == "eva":
                self.creator_step(t, policy, rewarder, evolver_llm)
            self.solver_data(t, policy, rewarder)
            if self.eva.rewriter:
                self.rewrite(t, evolver_llm)
        finally:  # every process frees its generation and reward models before training
            for held in {id(x): x for x in (policy, rewarder, evolver_llm)}.values():
                held.close()
        self.train(t)

    # ---- creator ---------------------------------------------------------------------------
    def previous_prompts(self, t: int) -> Dataset:
        if t == 1:
            pool = self.store.load(0, "prompts")
            return _with_origin(pool.select(range(self.set_size(pool))), "seed")
        return self.store.load(t - 1, "prompts")

    def previous_prompts_id(self, t: int) -> str:
        stage = self.upstream(t - 1 if t > 1 else 0, "prompts")["prompts"]
        return f"{stage}:{self.eva.prompts_per_iteration}"

    def sample(self, iteration: int, llm: _Lazy, prompts: list[str], n: int, salt: int) -> tuple[list, int]:
        """``n`` responses per prompt, shared across the processes, and the tokens generated."""
        if not prompts:  # everything reused: no model to load
            return [], 0
        backend = self.shards.together(llm.get)
        params = self.params(self.eva.generation, iteration, salt)
        gens = shared_generate(self.shards, backend, [user_turn(p) for p in prompts], n, params)
        return gens.texts, gens.num_tokens

    def creator_step(self, t: int, policy: _Lazy, rewarder: _Lazy, evolver_llm: _Lazy) -> None:
        eva, gen = self.eva, self.eva.generation
        prev = self.previous_prompts(t)
        sampling = {"policy": self.policy_id(t), "generation": dataclasses.asdict(gen), "seed": self.seed}

        def samples(_: Path) -> StageResult:
            texts, tokens = self.sample(t, policy, list(prev["prompt"]), eva.num_samples, salt=1)
            return StageResult(prev.add_column("responses", texts),
                               {"tokens_generated": tokens, "generations": len(prev) * eva.num_samples})

        cfg = {"prompts": self.previous_prompts_id(t), "n": eva.num_samples, **sampling}
        sampled = self.stage(t, "creator_samples", cfg, samples, collective=True)

        def rewards(_: Path) -> StageResult:
            conv = [user_turn(p) for p in sampled["prompt"]]
            responses = list(sampled["responses"])
            scores = self.score(rewarder, conv, responses)
            return StageResult(sampled.add_column("rewards", scores))

        rcfg = {**self.upstream(t, "creator_samples"), **self.reward_config()}
        scored = self.stage(t, "creator_rewards", rcfg, rewards, collective=True)

        def scores(_: Path) -> StageResult:
            proxy = plugins.get("proxies", eva.proxy)
            all_rewards = list(scored["rewards"])
            info = [proxy.info(r) for r in all_rewards]
            w = proxy_weights(proxy, all_rewards, eva.weighting)
            ds = Dataset.from_dict({"prompt_id": list(scored["prompt_id"]), "prompt": list(scored["prompt"]),
                                    "info": info, "weight": w.tolist()})
            finite = [v for v in info if np.isfinite(v)]
            return StageResult(ds, {"mean_info": float(np.mean(finite)) if finite else None})

        scored_info = self.stage(t, "scores", {**self.upstream(t, "creator_rewards"), "proxy": eva.proxy,
                                               "weighting": eva.weighting}, scores)

        def select(_: Path) -> StageResult:
            k = max(1, round(len(scored_info) * eva.subset_fraction))
            chooser = plugins.get("selectors", eva.selector)
            idx = [int(i) for i in chooser(np.asarray(scored_info["weight"]), k, self.rng(t, "selected"))]
            return StageResult(scored_info.select(idx), {"selected": len(idx)})

        selected = self.stage(t, "selected", {**self.upstream(t, "scores"), "selector": eva.selector,
                                              "fraction": eva.subset_fraction, "seed": self.seed}, select)

        evo_gen = eva.evolver_generation

        def evolve(_: Path) -> StageResult:
            evolver = plugins.get("evolvers", eva.evolver)(num_evolutions=eva.num_evolutions,
                                                           candidates=eva.evolver_candidates,
                                                           **eva.evolver_options)
            complete = _Completions(evolver_llm, self.params(evo_gen, t, salt=2), self.shards)

            def generate(instructions: list[str]) -> list[str | None]:
                texts, done = complete(instructions)
                return [None if not text else (text if ok or not eva.evolver_drop_truncated else Truncated(text))
                        for text, ok in zip(texts, done)]

            evolved = evolver.evolve(self.evolver_seeds(selected, scored), generate, self.rng(t, "evolved"))
            rules = hygiene.Hygiene(eva.evolved_min_words, eva.evolved_max_words, eva.near_duplicate_threshold)
            evolved = hygiene.apply(evolved, list(prev["prompt"]), rules)
            status = {s: sum(e.status == s for e in evolved) for s in STATUSES}
            rows = [e.as_row() for e in evolved]
            return StageResult(Dataset.from_list(rows), {**complete.stats(), **status})

        ecfg = {**self.upstream(t, "selected"), "evolver": eva.evolver, "n": eva.num_evolutions,
                "drop_truncated": eva.evolver_drop_truncated, "candidates": eva.evolver_candidates,
                "evolver_options": eva.evolver_options,
                "feedback": eva.evolver_feedback, "min_words": eva.evolved_min_words,
                "max_words": eva.evolved_max_words, "near_duplicate": eva.near_duplicate_threshold,
                "llm": eva.evolver_model or sampling["policy"], "evolver_generation": dataclasses.asdict(evo_gen),
                "policy_generation": dataclasses.asdict(gen) if eva.evolver_model is None else None}
        self.stage(t, "evolved", ecfg, evolve, collective=True)

    def evolver_seeds(self, selected: Dataset, scored: Dataset) -> list[dict]:
        """Selected prompts for the evolver, with best/worst responses when feedback is on."""
        seeds = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"]} for r in selected]
        if not self.eva.evolver_feedback:
            return seeds
        by_id = {r["prompt_id"]: r for r in scored}
        for seed in seeds:
            row = by_id[seed["prompt_id"]]
            rewards = row["rewards"]
            hi = max(range(len(rewards)), key=rewards.__getitem__)
            lo = min(range(len(rewards)), key=rewards.__getitem__)
            seed["feedback"] = {"best": row["responses"][hi], "best_reward": rewards[hi],
                                "worst": row["responses"][lo], "worst_reward": rewards[lo]}
        return seeds

    def score(self, rewarder: _Lazy, conversations: list, responses: list[list[str]]) -> list[list[float]]:
        """Rewards from the reward model (shared across the processes), length-penalised (RLHF
        Workflow) when ``length_penalty`` > 0."""
        model = self.shards.together(rewarder.get)
        rewards = shared_score(self.shards, model, conversations, responses)
        return length_penalised(rewards, responses, self.eva.length_penalty)

    def reward_config(self) -> dict:
        return {"reward_model": self.eva.reward_model, "reward_type": self.eva.reward_type,
                "reward_options": self.eva.reward_options, "length_penalty": self.eva.length_penalty}

    # ---- solver ----------------------------------------------------------------------------
    def new_prompts(self, t: int) -> tuple[Dataset, int]:
        """X_t and how many evolved prompts were missing: evolved + buffer (EVA), or the next
        slice of the seed pool (``creator: none``)."""
        if self.creator != "eva":
            pool = self.store.load(0, "prompts")
            n = self.set_size(pool)
            idx = [((t - 1) * n + i) % len(pool) for i in range(n)]
            return _with_origin(pool.select(idx), "seed"), 0
        prev = self.previous_prompts(t)
        evolved = self.store.load(t, "evolved")
        evolved = evolved.select([i for i, s in enumerate(evolved["status"]) if s == "kept"])
        plan = plan_mix(len(evolved), len(prev), len(prev), self.eva.evolved_fraction, self.rng(t, "prompts"))
        rows = [{"prompt_id": prompt_id(e["prompt"]), "prompt": e["prompt"], "origin": "evolved",
                 "parent_id": e["parent_id"]} for e in evolved.select(plan.evolved)]
        rows += [{"prompt_id": b["prompt_id"], "prompt": b["prompt"], "origin": "buffer",
                  "parent_id": ""} for b in prev.select(plan.buffer)]
        return Dataset.from_list(rows), plan.shortfall

    def solver_data(self, t: int, policy: _Lazy, rewarder: _Lazy) -> None:
        eva, gen = self.eva, self.eva.generation

        def prompts(_: Path) -> StageResult:
            ds, shortfall = self.new_prompts(t)
            origin = list(ds["origin"])
            origins = {o: origin.count(o) for o in sorted(set(origin))}
            return StageResult(ds, {"origins": origins, "evolved_shortfall": shortfall})

        if self.creator == "eva":
            pcfg = {**self.upstream(t, "evolved"), "fraction": eva.evolved_fraction, "seed": self.seed}
        else:
            pcfg = {"pool": self.upstream(0, "prompts"), "size": eva.prompts_per_iteration}
        xt = self.stage(t, "prompts", pcfg, prompts)

        reusable = self.reusable_samples(t)

        def samples(_: Path) -> StageResult:
            todo = [i for i, r in enumerate(xt) if r["prompt_id"] not in reusable]
            texts, tokens = self.sample(t, policy, [xt[i]["prompt"] for i in todo], eva.solver_samples, salt=3)
            fresh = dict(zip(todo, texts))
            responses, rewards, reused = [], [], []
            for i, row in enumerate(xt):
                if i in fresh:
                    responses.append(fresh[i])
                    rewards.append([])
                    reused.append(False)
                else:
                    old = reusable[row["prompt_id"]]
                    responses.append(old["responses"][: eva.solver_samples])
                    rewards.append(old["rewards"][: eva.solver_samples])
                    reused.append(True)
            ds = xt.add_column("responses", responses).add_column("reused_rewards", rewards)
            ds = ds.add_column("reused", reused)
            saved = sum(reused) * eva.solver_samples
            return StageResult(ds, {"tokens_generated": tokens, "generations": len(todo) * eva.solver_samples,
                                    "generations_saved": saved})

        scfg = {**self.upstream(t, "prompts"), "n": eva.solver_samples, "policy": self.policy_id(t),
                "reuse": self.upstream(t, "creator_rewards") if reusable else None,
                "generation": dataclasses.asdict(gen), "seed": self.seed}
        sampled = self.stage(t, "solver_samples", scfg, samples, collective=True)

        def rewards(_: Path) -> StageResult:
            todo = [i for i, r in enumerate(sampled) if not r["reused"]]
            scores = self.score(rewarder, [user_turn(sampled[i]["prompt"]) for i in todo],
                                [sampled[i]["responses"] for i in todo]) if todo else []
            fresh = dict(zip(todo, scores))
            all_rewards = [fresh.get(i, r["reused_rewards"]) for i, r in enumerate(sampled)]
            ds = sampled.remove_columns("reused_rewards").add_column("rewards", all_rewards)
            return StageResult(ds, {"scored": len(todo) * eva.solver_samples})

        scored = self.stage(t, "solver_rewards", {**self.upstream(t, "solver_samples"), **self.reward_config()},
                            rewards, collective=True)

        def pairs(_: Path) -> StageResult:
            rows, stats = build_pairs(scored)
            if not rows:
                raise RuntimeError(f"iteration {t}: every prompt gave a tie or identical responses; no pairs "
                                   "to train on (raise eva.solver_samples or the sampling temperature)")
            ds = Dataset.from_list(rows)
            stats.update(mean_chosen_reward=float(np.mean(ds["chosen_reward"])),
                         mean_rejected_reward=float(np.mean(ds["rejected_reward"])))
            return StageResult(ds, stats)

        self.stage(t, "pairs", self.upstream(t, "solver_rewards"), pairs)

    def training_pairs_stage(self) -> str:
        return "rewritten" if self.eva.rewriter else "pairs"

    def rewrite(self, t: int, llm: _Lazy) -> None:
        """``rewritten``: the pairs with chosen responses rewritten by the evolver LLM (where kept)."""
        eva = self.eva
        gen = dataclasses.replace(eva.evolver_generation, max_new_tokens=math.ceil(
            eva.generation.max_new_tokens * eva.rewriter_max_length_ratio))

        def make(_: Path) -> StageResult:
            pairs = self.store.load(t, "pairs")
            complete = _Completions(llm, self.params(gen, t, salt=4), self.shards)
            rows, counts = rewrite_pairs(pairs.to_list(), complete, eva.rewriter_max_length_ratio)
            return StageResult(Dataset.from_list(rows), {**complete.stats(), **counts})

        config = {**self.upstream(t, "pairs"), "ratio": eva.rewriter_max_length_ratio,
                  "llm": eva.evolver_model or self.policy_id(t), "generation": dataclasses.asdict(gen)}
        self.stage(t, "rewritten", config, make, collective=True)

    def reusable_samples(self, t: int) -> dict[str, dict]:
        """Creator samples that can stand in for solver samples (same policy and sampling, enough of them)."""
        eva = self.eva
        if self.creator != "eva" or not eva.reuse_creator_samples or eva.num_samples < eva.solver_samples:
            return {}
        if not (self.store.path(t, "creator_rewards") / "data").exists():
            return {}
        scored = self.store.load(t, "creator_rewards")
        return {r["prompt_id"]: {"responses": r["responses"], "rewards": r["rewards"]} for r in scored}

    # ---- training ----------------------------------------------------------------------------
    def reference_path(self, t: int) -> str:
        return self.policy_path(t) if self.eva.reference == "previous" else str(
            self.recipe.model.model_name_or_path)

    def train(self, t: int) -> None:
        source = self.training_pairs_stage()
        knobs = self.recipe.loss_knobs()
        config = {**self.upstream(t, source), "policy": self.policy_id(t), "reference": self.eva.reference,
                  "loss": self.eva.loss, "knobs": knobs,
                  "training": _training_config(self.recipe.training), "model": _model_config(self.recipe.model)}
        if self.store.is_done(t, "policy", config):
            self.log(f"[iter {t}] policy: done before, skipped")
            self.store.skipped.append(f"iter_{t}/policy")
            self.reports[-1].manifests["policy"] = self.store.manifest(t, "policy")
            return
        final = self.store.path(t, "policy")
        tmp = final.with_name(".policy.partial")
        if self.state.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.state.wait_for_everyone()
        started = time.perf_counter()
        # in memory: the trainer's tokenising map must not write cache files into the artifact
        pairs = self.store.load(t, source, keep_in_memory=True)
        stats = train_round(pairs, policy_path=self.policy_path(t), reference_path=self.reference_path(t),
                            training=self.recipe.training, model_args=self.recipe.model, save_dir=tmp,
                            loss=self.eva.loss, knobs=knobs)
        if self.state.is_main_process:
            shutil.rmtree(tmp / "trainer_state", ignore_errors=True)
            manifest = {"stage": "policy", "iteration": t, "fingerprint": fingerprint(config), "config": config,
                        "rows": len(pairs), "seconds": round(time.perf_counter() - started, 3), **stats}
            write_json_atomic(tmp / MANIFEST, manifest)
            publish_dir(tmp, final)
            self.log(f"[iter {t}] policy: trained on {len(pairs)} pairs in {manifest['seconds']:.1f}s "
                     f"(loss {stats['train_loss']:.4f})")
        self.state.wait_for_everyone()
        self.reports[-1].manifests["policy"] = self.store.manifest(t, "policy")
        self.maybe_stop(t, "policy")

    def write_run_manifest(self) -> None:
        if not self.state.is_main_process:
            return
        for report in self.reports[1:]:
            write_json_atomic(self.root / f"iter_{report.iteration}" / MANIFEST, {
                "iteration": report.iteration, "creator": self.creator,
                "stages": {name: {k: v for k, v in m.items() if k != "config"}
                           for name, m in report.manifests.items() if m},
            })


class StopAfterStage(Exception):
    """Raised by ``stop_after`` to end a run right after one stage finished."""


def _with_origin(ds: Dataset, origin: str) -> Dataset:
    """Tag rows in memory (``map`` would write cache files into the artifact folder)."""
    return ds.flatten_indices(keep_in_memory=True).add_column("origin", [origin] * len(ds))


#: DPOConfig keys that do not change the trained weights (where and how a run reports).
_NOT_TRAINING = ("output_dir", "logging", "log_", "report_to", "run_name", "hub_", "push_to_hub", "save_",
                 "eval_", "per_device_eval", "do_eval", "do_predict", "disable_tqdm", "local_rank",
                 "resume_from_checkpoint", "dataloader_num_workers", "include_", "skip_memory_metrics",
                 "trackio", "project", "print_")


def _training_config(training) -> dict:
    return {k: v for k, v in training.to_dict().items() if not k.startswith(_NOT_TRAINING)}


def _model_config(model) -> dict:
    return dataclasses.asdict(model)
