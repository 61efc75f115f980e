"""What a stage may know: the run (``Run``) and the iteration it works in (``Iteration``).

The loop builds one ``Run`` and one ``Iteration`` per round and hands it to every stage;
stages never import the loop. A stage is a small class (``Stage``): its ``name``, how it
runs across processes (``mode``), the inputs that fingerprint it (``config``) and its
work (``work``), which reads upstream artifacts from the store and returns a
``StageResult``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eva_plugin import plugins
from eva_plugin.artifacts import StageResult, StageStore
from eva_plugin.content import local_id
from eva_plugin.data import user_turn
from eva_plugin.generation import SamplingParams, usage_stats
from eva_plugin.generation.seeding import derive_seed
from eva_plugin.options import EvolverContext, ModelContext
from eva_plugin.plugin_outputs import check_spread
from eva_plugin.runtime import MAIN, OnDemand, StageRuntime
from eva_plugin.secrets import redact
from eva_plugin.sharding import generate as shared_generate
from eva_plugin.sharding import score as shared_score
from eva_plugin.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Facts of one run that every stage reads: the recipe, the artifact store, the processes."""

    recipe: Any  # eva_plugin.recipe.Recipe
    runtime: StageRuntime

    @property
    def eva(self):
        return self.recipe.eva

    @property
    def creator(self) -> str:
        return self.recipe.creator or "none"

    def creator_on(self, iteration: int) -> bool:
        """Whether the creator runs in ``iteration`` (``creator: eva``, after the warm-up rounds)."""
        return self.creator == "eva" and iteration > self.eva.warmup_iterations

    @property
    def store(self) -> StageStore:
        return self.runtime.store

    @cached_property
    def tracker(self) -> Tracker:
        """The run's experiment trackers (``report_to``; nothing with ``none``), shared by every round."""
        return Tracker(self.recipe.training, self.store.root, self.runtime.is_main)

    @property
    def seed(self) -> int:
        return self.eva.seed if self.eva.seed is not None else self.recipe.training.seed

    def rng(self, iteration: int, purpose: str) -> np.random.Generator:
        """A local RNG per (iteration, purpose): reproducible and independent of stage order."""
        return np.random.default_rng(derive_seed(self.seed, iteration, purpose))

    def params(self, gen, iteration: int, purpose: str) -> SamplingParams:
        """Sampling parameters of ``gen`` with a seed of their own per (iteration, purpose)."""
        return SamplingParams(temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                              seed=derive_seed(self.seed, iteration, purpose))

    def policy_path(self, t: int) -> str:
        """π_t: the policy trained in round ``t`` (``t`` = 0: the recipe's initial model). Round ``t``
        samples with π_{t-1}."""
        if t <= 0:
            return str(self.recipe.model.model_name_or_path)
        return str(self.store.path(t, "policy"))

    def policy_id(self, t: int) -> str:
        """What identifies π_t in fingerprints: the initial model's path and content (a model replaced
        at the same path is another model), a trained one's stage fingerprint."""
        if t <= 0:
            return local_id(str(self.recipe.model.model_name_or_path))
        return (self.store.manifest(t, "policy") or {}).get("fingerprint", "missing")

    def reference_path(self, iteration: int) -> str:
        if self.eva.reference == "previous":
            return self.policy_path(iteration - 1)
        return str(self.recipe.model.model_name_or_path)

    def upstream(self, iteration: int, *stages: str) -> dict[str, str]:
        """The fingerprints of finished stages (a stage's config includes its inputs')."""
        return {s: (self.store.manifest(iteration, s) or {}).get("fingerprint", "") for s in stages}

    def model_context(self, gen=None, model_path: str | None = None) -> ModelContext:
        """What the run decides for a model it builds: this process's device, the recipe's loading
        keywords, the run seed and (for a backend) the generation block's dtype and batching."""
        from eva_plugin.modeling import model_kwargs

        recipe = self.recipe
        base = ModelContext(device=str(self.runtime.state.device), dtype=recipe.model.dtype,
                            trust_remote_code=recipe.training.trust_remote_code, seed=self.seed)
        if gen is None:
            return base
        return dataclasses.replace(base, dtype=gen.dtype or recipe.model.dtype, batch_size=gen.batch_size,
                                   batch_tokens=gen.batch_tokens, sampling=gen.sampling,
                                   model_kwargs=model_kwargs(recipe.model, model_path))

    def backend(self, model_path: str, gen, where: str = "eva.generation") -> Any:
        """The generation backend ``gen.backend`` for ``model_path``, with ``gen.options``."""
        options = plugins.parse_options("backends", gen.backend, gen.options, f"{where}.options")
        return plugins.build("backends", gen.backend, model_path, options=options,
                             context=self.model_context(gen, model_path))

    def reward_model(self, role: str = "solver") -> Any:
        """The reward model that scores for ``role`` (``EvaArguments.rewarder``)."""
        rewarder = self.eva.rewarder(role)
        options = plugins.parse_options("reward_models", rewarder.type, rewarder.options, f"{rewarder.key}_options")
        return plugins.build("reward_models", rewarder.type, rewarder.model, options=options,
                             context=self.model_context())

    def evolver(self) -> Any:
        eva = self.eva
        options = plugins.parse_options("evolvers", eva.evolver, eva.evolver_options, "eva.evolver_options")
        return plugins.build("evolvers", eva.evolver, options=options,
                             context=EvolverContext(eva.num_evolutions, eva.evolver_candidates))

    def reward_config(self, role: str = "solver") -> dict:
        """What decides the rewards scored for ``role`` (stage configs and manifests name the model)."""
        rewarder = self.eva.rewarder(role)
        return {"reward_model": local_id(rewarder.model), "reward_type": rewarder.type,
                "reward_options": redact(rewarder.options), "length_penalty": self.eva.length_penalty}


class Iteration:
    """One round ``t``: the run, and the models it samples and scores with (built on first use,
    freed by ``close`` before training)."""

    def __init__(self, run: Run, t: int) -> None:
        self.run, self.t = run, t
        eva = run.eva
        self.policy = OnDemand(lambda: run.backend(run.policy_path(t - 1), eva.generation))
        self.generation = eva.generation  # how ``sample`` samples ``policy``
        solver = OnDemand(lambda: run.reward_model("solver"))
        #: the reward model of each role; one object when one model scores for both
        self.rewarders = {"solver": solver, "creator": solver if eva.one_rewarder()
                          else OnDemand(lambda: run.reward_model("creator"))}
        own = eva.evolver_model is not None or eva.evolver_generation.backend != eva.generation.backend
        evolver_path = eva.evolver_model or run.policy_path(t - 1)
        evolver_gen = eva.evolver_generation
        self.evolver_llm = OnDemand(lambda: run.backend(evolver_path, evolver_gen, "eva.evolver_generation")) \
            if own else self.policy
        #: models whose backend reserves most of the GPU (vLLM): no other model is held beside them
        self._exclusive = {id(self.policy): exclusive(eva.generation.backend),
                           id(self.evolver_llm): exclusive(eva.evolver_generation.backend)}

    def sample_with(self, model_path: str, gen) -> None:
        """``sample`` answers with ``model_path`` under ``gen`` instead of π_{t-1} under ``eva.generation``
        (the held-out evaluation's π_t, the prompt judge)."""
        self.policy = OnDemand(lambda: self.run.backend(model_path, gen))
        self._exclusive[id(self.policy)] = exclusive(gen.backend)
        self.generation = gen

    @property
    def eva(self):
        return self.run.eva

    @property
    def creator_on(self) -> bool:
        return self.run.creator_on(self.t)

    def do(self, stage: Stage) -> Any:
        """Run ``stage`` for this iteration (skipped when done) and return its dataset. Its config is made
        on the main process and sent to the others: it holds the content hashes of local inputs
        (``content.local_id``; a 9B policy's folder is ~18 GB to read), which one process reads, not each."""
        runtime = self.run.runtime
        config = runtime.on_main(lambda: stage.config(self), share=True)
        return runtime.run_stage(self.t, stage.name, config, lambda tmp: stage.work(self, tmp), stage.mode)

    def load(self, stage: str, **kwargs: Any):
        return self.run.store.load(self.t, stage, **kwargs)

    def upstream(self, *stages: str) -> dict[str, str]:
        return self.run.upstream(self.t, *stages)

    def rng(self, purpose: str) -> np.random.Generator:
        return self.run.rng(self.t, purpose)

    def params(self, gen, purpose: str) -> SamplingParams:
        return self.run.params(gen, self.t, purpose)

    def sample(self, prompts: list[str], n: int, purpose: str) -> tuple[list[list[str]], dict[str, int]]:
        """``n`` responses of the policy per prompt (shared across the processes, in chunks a rerun reuses)
        and the counts for the stage's manifest: tokens generated, prompts too long for the model
        (answered by empty texts)."""
        if not prompts:  # everything reused: no model to load
            return [], {"tokens_generated": 0, "prompts_too_long": 0}
        self.make_room(self.policy)
        backend = self.run.runtime.shards.together(self.policy.get)
        gens = shared_generate(self.run.runtime.shards, backend, [user_turn(p) for p in prompts], n,
                               self.params(self.generation, purpose), chunks=self.run.runtime.chunks)
        return gens.texts, {"tokens_generated": gens.num_tokens, "prompts_too_long": gens.dropped_too_long,
                            **usage_stats(gens.usage)}

    def score(self, prompts: list[str], responses: list[list[str]], what: str,
              role: str = "solver") -> tuple[list[list[float]], dict[str, int]]:
        """Rewards of ``role``'s reward model (shared across the processes, in chunks), length-penalised (RLHF
        Workflow) when ``length_penalty`` > 0, and the counts for the stage's manifest: responses
        ``scored`` and ``nonfinite_rewards``. What the reward model returns is checked (``plugin_outputs``:
        one number per response, a stage not all one value). A reward that is not finite (NaN, ±inf) stays as NaN
        (the stages that use rewards drop it per response) and is said once, naming ``what``."""
        if not prompts:  # everything reused: no model to load
            return [], {"scored": 0, "nonfinite_rewards": 0}
        held, named = self.rewarders[role], self.eva.rewarder(role)  # the model, and how the recipe names it
        self.make_room(held)
        model = self.run.runtime.shards.together(held.get)
        rewards = shared_score(self.run.runtime.shards, model, [user_turn(p) for p in prompts], responses,
                               named.type, chunks=self.run.runtime.chunks)
        check_spread(rewards, prompts, responses, named.type, f"iteration {self.t}, {what} rewards", named.key)
        rewards = length_penalised(rewards, responses, self.eva.length_penalty)
        scored, bad = sum(map(len, rewards)), count_nonfinite(rewards)
        if bad:
            logger.warning("iteration %d: %d of %d %s rewards are not finite (NaN or inf); they are dropped",
                           self.t, bad, scored, what)
        return rewards, {"scored": scored, "nonfinite_rewards": bad}

    def make_room(self, needed: OnDemand) -> None:
        """Before ``needed`` is used: free the other models if it, or one of them, must have the GPU
        to itself (a sleeping vLLM engine gives its memory back; it wakes on next use). Two reward
        models are never held together: one is freed before the other loads."""
        rewarders = list({id(x): x for x in self.rewarders.values()}.values())
        others = [x for x in self.models() if x is not needed]
        for held in others:
            if needed in rewarders and held in rewarders:
                held.close()
            elif self._exclusive.get(id(needed)) or self._exclusive.get(id(held)):
                if held in rewarders:
                    held.close()
                else:  # a backend: the same weights come back later in this round
                    held.pause()

    def close(self) -> None:
        """Free every generation and reward model of this iteration (each process, before training)."""
        for held in self.models():
            held.close()

    def models(self) -> list[OnDemand]:
        """Every model this iteration may build, each once."""
        held = (self.policy, *self.rewarders.values(), self.evolver_llm)
        return list({id(x): x for x in held}.values())


class Stage:
    """One step of Algorithm 1 that writes ``iter_<t>/<name>/``."""

    name: ClassVar[str]
    mode: ClassVar[str] = MAIN  # runtime.MAIN | SHARED | EVERY

    def iteration(self, run: Run, t: int) -> Iteration:
        """The iteration this stage works in: a round's own (``Iteration``), or one with other models for
        the stages that run after the round (held-out evaluation of π_t, the prompt judge)."""
        return Iteration(run, t)

    def config(self, it: Iteration) -> dict:
        """Everything that decides the artifact (upstream fingerprints included)."""
        raise NotImplementedError

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        """Make the artifact (files may go into ``tmp``; a returned dataset is saved there)."""
        raise NotImplementedError


def length_penalised(rewards: list[list[float]], responses: list[list[str]], penalty: float) -> list[list[float]]:
    """r − λ·|y| with |y| in characters (RLHF Workflow); λ = 0 leaves the rewards as they are.
    Non-finite rewards (NaN, ±inf) come back as NaN, one marker for "no usable reward"."""
    return [[float(r) - penalty * len(y) if math.isfinite(float(r)) else math.nan for r, y in zip(rs, ys)]
            for rs, ys in zip(rewards, responses)]


def count_nonfinite(rewards: list[list[float]]) -> int:
    """How many rewards are not finite (NaN, ±inf)."""
    return sum(not math.isfinite(float(r)) for rs in rewards for r in rs)


def as_dict(gen) -> dict:
    """A generation config as a plain dict (for fingerprints and manifests), secrets masked
    (``eva_plugin.secrets.redact``: a masked value still changes the fingerprint when it changes) and
    the backend's ``not_fingerprinted`` options (a price, a request rate) left out."""
    data = dataclasses.asdict(gen)
    quiet = getattr(plugins.options_schema("backends", gen.backend), "not_fingerprinted", frozenset())
    if quiet and isinstance(data.get("options"), dict):
        data["options"] = {k: v for k, v in data["options"].items() if k not in quiet}
    return redact(data)


def exclusive(backend: str) -> bool:
    """Whether the generation backend ``backend`` keeps the GPU to itself (``exclusive`` on its class)."""
    return bool(getattr(plugins.get("backends", backend), "exclusive", False))
