"""``EvaArguments``: the ``creator:`` flag and ``eva:`` block of a recipe, paper defaults.

Only the dataclasses and their value-range checks live here (no plugin, proxy or loss
imports): every field's ``help`` and default feed ``--help`` and the table in docs/configuration.md
(``eva_plugin.docs``); ``eva_plugin.checks`` checks names against the plugin registry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass, field
from typing import Any

from eva_plugin.errors import RecipeError
from eva_plugin.typed import check_fields, from_mapping, short_repr, unknown_keys

CREATORS = ("eva", "none")
REFERENCES = ("previous", "initial")
CREATOR_INPUTS = ("previous", "fresh")
BUFFERS = ("seed", "previous")
SPLITS = ("shuffled", "ordered")
SAMPLINGS = ("seeded", "native")


@dataclass
class GenerationArguments:
    """How responses (or evolved prompts) are sampled."""

    backend: str = field(
        default="transformers",
        metadata={"help": "Generation backend: transformers, vllm, openai (an OpenAI-compatible server) or "
                  "a plugin."},
    )
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature; 0 = greedy (evolver and judge; the policy's responses need > 0)."},
    )
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    max_new_tokens: int = field(default=2048, metadata={"help": "Maximum new tokens per response."})
    batch_size: int = field(
        default=64,
        metadata={"help": "At most this many prompts per generate call (transformers backend); "
                  "`batch_tokens` usually closes a call first."},
    )
    batch_tokens: int | None = field(
        default=None,
        metadata={"help": "Token budget of a generate call (transformers backend): its rows (prompts × n) "
                  "× (longest prompt + max_new_tokens), the KV cache it can need; whichever of this and "
                  "`batch_size` is reached first closes the call, and a longer prompt gets a call of its "
                  "own. null: what fills half the free GPU memory with KV cache (16384 on CPU)."},
    )
    sampling: str = field(
        default="seeded",
        metadata={"help": "seeded: each (prompt, sample) draws from its own counter-based random stream, "
                  "so samples do not depend on batching, order or process count; native: the "
                  "backend's own sampler (transformers `do_sample`, seeded per call), slightly faster "
                  "but batch-dependent (transformers backend)."},
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "Model dtype for generation; default: the recipe's `dtype`."},
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "The backend's own options, checked against the options it declares (`eva plugins` "
                  "lists them; vllm: tensor_parallel_size, gpu_memory_utilization, max_model_len, "
                  "…, engine_args; openai: base_url, api_key_env, concurrency, requests_per_minute, timeout, "
                  "max_retries, backoff, max_wait, prompt_price_per_1k, completion_price_per_1k)."},
    )
    #: the recipe key of this block, for messages (``eva.generation``, ``eva.evolver_generation``, …)
    key: InitVar[str] = "eva.generation"

    def __post_init__(self, key: str) -> None:
        check_fields(self, key)
        check_finite(self, key)
        checks = [
            (0 < self.top_p <= 1, f"{key}.top_p must be in (0, 1]"),
            (self.temperature >= 0, f"{key}.temperature must be >= 0"),
            (self.sampling in SAMPLINGS, f"{key}.sampling must be seeded or native"),
            (self.max_new_tokens >= 1, f"{key}.max_new_tokens must be >= 1"),
            (self.batch_size >= 1, f"{key}.batch_size must be >= 1"),
            (self.batch_tokens is None or self.batch_tokens >= 1, f"{key}.batch_tokens must be >= 1 or null"),
            (self.backend != "openai" or bool(self.options.get("base_url")),
             f"{key}.backend openai needs {key}.options.base_url (the server's /v1 address)"),
        ]
        _raise_first(checks)


def _evolver_generation() -> GenerationArguments:
    # the authors' evolving settings: temperature 0.88, at most 666 new tokens
    return GenerationArguments(temperature=0.88, top_p=1.0, max_new_tokens=666, key="eva.evolver_generation")


def _judge_generation() -> GenerationArguments:
    # a rating is one number: greedy, a few tokens of room for a model that writes "Rating: 4"
    return GenerationArguments(temperature=0.0, top_p=1.0, max_new_tokens=16, key="eva.judge_generation")


def check_finite(obj: Any, where: str) -> None:
    """Every float field of the dataclass ``obj`` finite: NaN passes no comparison and infinity passes
    ``>= 0``, so the range checks alone would let them through."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"`{where}.{f.name}` must be a finite number, got {value!r}")


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise RecipeError(message)


@dataclass(frozen=True)
class Rewarder:
    """One reward model as the recipe names it: path, type, options, and the recipe keys' stem
    (``eva.reward`` or ``eva.creator_reward``, + ``_model``/``_type``/``_options``)."""

    model: str | None
    type: str
    options: dict[str, Any]
    key: str

    def same_model(self, other: Rewarder) -> bool:
        return (self.model, self.type, self.options) == (other.model, other.type, other.options)


@dataclass
class EvaArguments:
    """The EVA loop. Defaults are the paper's (EVA §4 and its appendix)."""

    iterations: int = field(default=3, metadata={"help": "Number of creator → solver rounds."})
    warmup_iterations: int = field(
        default=0,
        metadata={"help": "The first rounds run without the creator (plain online DPO on the next seed "
                  "slice); the creator starts after them. The paper's EVA rows start from one plain round "
                  "(θ0 → θ1, then EVA): its recipes set 1."},
    )
    creator_input: str = field(
        default="previous",
        metadata={"help": "What the creator scores and evolves in round t: previous (X_{t-1}, the set the "
                  "last round trained on) or fresh (the next unused split of the seed pool, paper Table "
                  "26: every seed prompt is used once)."},
    )
    buffer: str = field(
        default="seed",
        metadata={"help": "Where the non-evolved share of X_t comes from: seed (original prompts, the "
                  "paper's buffer) or previous (X_{t-1})."},
    )
    reuse_pool: bool = field(
        default=False,
        metadata={"help": "Allow the seed pool to be used again (wrapping around) when the iterations need "
                  "more seed prompts than it has; false = refuse before any model loads."},
    )
    splits: str = field(
        default="shuffled",
        metadata={"help": "How the seed splits are cut: shuffled (every dataset of the mixture pooled, "
                  "shuffled with the run seed and cut into consecutive splits) or ordered (the t-th split "
                  "the run draws is the t-th dataset of the mixture, in the recipe's order, shuffled within "
                  "itself with the run seed; `prompts_per_iteration` of its prompts, all of them when it has "
                  "fewer or that is null; RLHF Workflow's iter1/iter2/iter3 prompt sets). ordered needs a "
                  "dataset for every split the run draws; `reuse_pool` does not apply to it."},
    )
    prompts_per_iteration: int | None = field(
        default=None,
        metadata={"help": "Size of every prompt set X_t; null = the seed pool divided evenly among the rounds "
                  "that draw a split (with `splits: ordered`: all of each round's dataset)."},
    )
    prompts: str | None = field(
        default=None,
        metadata={"help": "Seed prompts from a local JSONL/JSON/parquet/CSV file or a `save_to_disk` "
                  "folder; overrides `dataset_mixture` / `dataset_name`."},
    )
    prompt_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the prompt; default: `prompt`, else the first user turn of "
                  "`messages`/`chosen`/`conversations`."},
    )
    eval_prompts: str | None = field(
        default=None,
        metadata={"help": "Held-out evaluation prompts (local JSONL/JSON/parquet/CSV file or `save_to_disk` "
                  "folder, read like `prompts`), never trained on; null = the recipe's `test_split_size` "
                  "share of the seed pool when it sets one, else no evaluation. Each round's policy (and the "
                  "initial one, `iter_0/eval`) answers them and the reward model scores the answers."},
    )
    eval_samples: int = field(
        default=1, metadata={"help": "Responses per evaluation prompt (their rewards are averaged per prompt)."}
    )
    eval_size: int | None = field(
        default=None, metadata={"help": "Use at most this many evaluation prompts (null = all of them)."}
    )
    eval_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of the evaluation answers; null = generation.temperature; "
                  "0 = greedy (one deterministic answer per prompt: set eval_samples to 1)."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "LLM that rates each prompt's complexity and quality on 1-5 scales (the paper's "
                  "§E.1) for the seed pool (`iter_0/judged`) and every X_t (`iter_<t>/judged`): a local path, "
                  "or the model name on a server (judge_generation.backend: openai); null = no judging."},
    )
    judge_size: int | None = field(
        default=200,
        metadata={"help": "Rate at most this many prompts per set (a seeded random subset; the paper rated "
                  "10K per iteration); null = every prompt."},
    )
    num_samples: int = field(default=6, metadata={"help": "Creator: responses sampled per prompt for scoring."})
    proxy: str = field(
        default="a_min",
        metadata={"help": "Informativeness proxy: a_min, a_avg, variance, mean, inv_mean, inv_a_min, "
                  "uniform or a plugin (`eva plugins` lists them)."},
    )
    weighting: str = field(
        default="minmax",
        metadata={"help": "How proxy values become weights: minmax (the authors' code: least informative "
                  "gets 0) or proportional."},
    )
    selector: str = field(
        default="sample",
        metadata={"help": "Subset selector: sample (weighted, without replacement), greedy (top-k) or a "
                  "plugin."},
    )
    subset_fraction: float = field(default=0.25, metadata={"help": "Share of X_{t-1} selected for evolving."})
    evolver: str = field(
        default="evol_instruct",
        metadata={"help": "Prompt evolver: evol_instruct, evol_complexity, evol_quality, self_instruct or a"
                  " plugin."},
    )
    num_evolutions: int = field(
        default=4,
        metadata={"help": "Evolutions per selected prompt, all kept (chained; self_instruct: independent "
                  "variants)."},
    )
    evolver_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for the evolver factory (e.g. evol_instruct: `mutations`); "
                  "`eva plugins` and docs/configuration.md list each built-in's options."},
    )
    evolver_model: str | None = field(
        default=None,
        metadata={"help": "Model for evolving: null = the current policy; a local path, or the model name "
                  "on a server (evolver_generation.backend: openai)."},
    )
    evolver_candidates: int = field(
        default=1,
        metadata={"help": "Best-of-k evolving: k rewrites sampled per evolution step, the first usable one "
                  "kept (1 = the paper: one rewrite per step)."},
    )
    evolver_drop_truncated: bool = field(
        default=True,
        metadata={"help": "Drop evolved prompts the evolver LLM did not finish within "
                  "evolver_generation.max_new_tokens."},
    )
    evolver_feedback: bool = field(
        default=False,
        metadata={"help": "Show the evolver the seed's best and worst sampled responses and rewards."},
    )
    evolver_max_failure_rate: float = field(
        default=0.05,
        metadata={"help": "Largest share of the evolver LLM's responses that may fail (a server request whose "
                  "retries ran out, a null answer, a prompt too long for a local engine) before the `evolved` "
                  "stage stops with one line; a rerun then sends only the requests not answered yet. 1: never "
                  "stop (failed evolutions are dropped and buffer prompts take their place)."},
    )
    evolved_min_words: int = field(
        default=0, metadata={"help": "Opt-in: drop evolved prompts with fewer words (0 = off, as in the paper)."}
    )
    evolved_max_words: int | None = field(
        default=None, metadata={"help": "Opt-in: drop evolved prompts with more words (null = off)."}
    )
    evolved_drop_refusals: bool = field(
        default=False,
        metadata={"help": "Opt-in: drop evolved prompts that read as an LLM refusal (\"I'm sorry, I can't…\")."},
    )
    near_duplicate_threshold: float = field(
        default=1.0,
        metadata={"help": "Opt-in: drop evolved prompts at least this similar (character 5-gram Jaccard, "
                  "MinHash) to the seed prompts or to another chain's evolutions (never to their own "
                  "chain); 1.0 = off, as in the paper (all evolutions kept)."},
    )
    evolved_fraction: float = field(
        default=0.8,
        metadata={"help": "Evolved share of X_t; the rest is drawn from the buffer (see `buffer`)."},
    )
    solver_samples: int = field(default=6, metadata={"help": "Solver: responses sampled per prompt."})
    reuse_creator_samples: bool = field(
        default=True,
        metadata={"help": "Reuse the creator's scored samples for buffer prompts when sampling matches."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "The reward model (local path or hub id; required with `creator:`). It scores the "
                  "solver's samples that become pairs, and the creator's too unless `creator_reward_model` "
                  "is set."},
    )
    reward_type: str = field(
        default="sequence_classification",
        metadata={"help": "Reward model: sequence_classification, embedding (prompt↔response cosine, mean "
                  "pooling), pairwise (a preference LM judging \"[CONTEXT] x [RESPONSE A] a "
                  "[RESPONSE B] b\"; reward = mean win probability against the other samples), pairrm "
                  "(LLM-Blender's PairRM, PairRM-hf layout; reward = its aggregate score over all ordered "
                  "pairs) or a plugin."},
    )
    reward_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for the reward model: batch_size, dtype, trust_remote_code, "
                  "max_length; pairwise: order (random seeded, or both averaged), template, labels."},
    )
    creator_reward_model: str | None = field(
        default=None,
        metadata={"help": "A second reward model for the creator: it scores the creator's samples "
                  "(informativeness) and the held-out evaluation, while `reward_model` scores the solver's "
                  "pairs (SPPO's authors: ArmoRM for the creator, PairRM for the pairs). null: `reward_model`"
                  " does both. Buffer prompts' creator samples are then re-scored by the solver's model."},
    )
    creator_reward_type: str | None = field(
        default=None,
        metadata={"help": "Type of `creator_reward_model` (the names of `reward_type`); null: `reward_type`."},
    )
    creator_reward_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for `creator_reward_model` (as `reward_options`; not inherited)."},
    )
    rewriter: bool = field(
        default=False,
        metadata={"help": "Rewrite each pair's chosen response with the evolver LLM before training."},
    )
    rewriter_max_length_ratio: float = field(
        default=1.5,
        metadata={"help": "Keep a rewrite only within this ratio of the original's length (either way); the"
                  " rewriter may generate up to generation.max_new_tokens times this ratio."},
    )
    loss: str | None = field(
        default=None,
        metadata={"help": "Preference loss: dpo, ipo, sppo (the SPPO authors' soft loss on win probabilities), "
                  "sppo_hard (TRL's P = 1/0 variant) (TRL DPOTrainer), simpo (experimental CPOTrainer), orpo "
                  "(experimental ORPOTrainer); null = the recipe's own TRL `loss_type`/`loss_weights` where it "
                  "sets them, else dpo."},
    )
    loss_args: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "The loss's own knobs: dpo/ipo/sppo/sppo_hard beta (0.05 / 0.05 / 0.001 / 0.001; a "
                  "recipe's own `beta` wins), label_smoothing (dpo); simpo beta 10, gamma 5; nll_alpha (α · "
                  "length-normalised NLL of the chosen response, 0 = off; not orpo) and, for the DPOTrainer "
                  "losses, nll_length_power (Σ NLL / |y+|^p, default 1; 2 = the EVA authors' RPO term at one "
                  "pair per device); orpo lambda 0.5; a null loss (the recipe's own) takes only the NLL knobs."},
    )
    length_penalty: float = field(
        default=0.0,
        metadata={"help": "λ in r − λ·(response length in characters), applied before informativeness and "
                  "pair choice (RLHF Workflow; 0.001 gave its concise model). 0 = off."},
    )
    reference: str = field(
        default="previous",
        metadata={"help": "DPO reference model each round: previous (last round's policy) or initial (the "
                  "starting policy)."},
    )
    seed: int | None = field(
        default=None,
        metadata={"help": "Seed for every sampling step (null = the recipe's `seed`); each prompt gets its "
                  "own random streams, so samples do not depend on batch size, prompt order or the "
                  "number of processes."},
    )
    collective_timeout: int | None = field(
        default=None,
        metadata={"help": "Seconds a process waits for the others at a shared step (the end of a sampling or "
                  "scoring share, the main process's bookkeeping, the end of a training round) before the run "
                  "stops; null = the longer of the recipe's `ddp_timeout` and 6 hours (`ddp_timeout` itself "
                  "times only the trainer's own collectives)."},
    )
    chunk_size: int | None = field(
        default=256,
        metadata={"help": "Sampling and scoring stages save their work every `chunk_size` prompts per process "
                  "(`iter_<t>/.<stage>.chunks-<fingerprint>/`), so a rerun after a crash or a time limit "
                  "resumes inside the stage. The responses do not depend on it; rewards at most in float32's last "
                  "bits, as with the number of processes. null = no chunks.", "ge": 1},
    )
    generation: GenerationArguments = field(
        default_factory=GenerationArguments,
        metadata={"help": "Response sampling (creator and solver)."},
    )
    evolver_generation: GenerationArguments = field(
        default_factory=_evolver_generation,
        metadata={"help": "Sampling for the evolver LLM."},
    )
    judge_generation: GenerationArguments = field(
        default_factory=_judge_generation,
        metadata={"help": "Sampling for the judge LLM (`judge_model`); default greedy, 16 new tokens."},
    )

    def rewarder(self, role: str) -> Rewarder:
        """The reward model that scores for ``role``: "creator" (the creator's samples and the held-out
        evaluation) or "solver" (the samples that become pairs)."""
        if role == "creator" and self.creator_reward_model is not None:
            return Rewarder(self.creator_reward_model, self.creator_reward_type or self.reward_type,
                            self.creator_reward_options, "eva.creator_reward")
        return Rewarder(self.reward_model, self.reward_type, self.reward_options, "eva.reward")

    def one_rewarder(self) -> bool:
        """Whether one reward model scores for creator and solver alike."""
        return self.rewarder("creator").same_model(self.rewarder("solver"))

    def __post_init__(self) -> None:
        """Types, ranges, plugin names and every plugin's options: an ``EvaArguments`` that exists is valid."""
        check_fields(self, "eva")
        for key, cls in NESTED.items():
            if not isinstance(getattr(self, key), cls):
                raise RecipeError(f"`eva.{key}` must be a mapping, got {short_repr(getattr(self, key))}")
        check_finite(self, "eva")
        check_values(self)
        from eva_plugin.checks import check_plugins

        check_plugins(self)


NESTED = {"generation": GenerationArguments, "evolver_generation": GenerationArguments,
          "judge_generation": GenerationArguments}


def generations(args: EvaArguments) -> list[tuple[str, GenerationArguments]]:
    """Every ``eva.*generation`` block with its key: the policy's, the evolver's and the judge's."""
    return [(key, getattr(args, key)) for key in NESTED]


def eva_arguments(block: dict[str, Any] | None) -> EvaArguments:
    """``EvaArguments`` from the recipe's ``eva:`` mapping (missing keys = defaults; a generation block
    given in part keeps its other defaults)."""
    if block is not None and not isinstance(block, dict):
        raise RecipeError(f"`eva` must be a mapping of eva keys, got {short_repr(block)}")
    block = dict(block or {})
    unknown_keys(EvaArguments, block, "eva")
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(EvaArguments) if f.name in NESTED}
    for key in NESTED:
        if key in block:
            given = {} if block[key] is None else block[key]
            if not isinstance(given, dict):
                raise RecipeError(f"`eva.{key}` must be a mapping, got {short_repr(given)}")
            base = dataclasses.asdict(defaults[key])
            block[key] = from_mapping(GenerationArguments, {**base, **given}, f"eva.{key}", key=f"eva.{key}")
    return from_mapping(EvaArguments, block, "eva")


def check_values(args: EvaArguments) -> None:
    """Value ranges and settings that depend on each other (plugin names and options: ``checks``)."""
    _raise_first([
        (args.iterations >= 1, "eva.iterations must be >= 1"),
        (args.num_samples >= 2, "eva.num_samples must be >= 2 (the proxies compare responses)"),
        (args.solver_samples >= 2, "eva.solver_samples must be >= 2 (a pair needs two responses)"),
        (0 < args.subset_fraction <= 1, "eva.subset_fraction must be in (0, 1]"),
        (0 <= args.evolved_fraction <= 1, "eva.evolved_fraction must be in [0, 1]"),
        (args.num_evolutions >= 1, "eva.num_evolutions must be >= 1"),
        (args.evolver_candidates >= 1, "eva.evolver_candidates must be >= 1"),
        (0 <= args.evolver_max_failure_rate <= 1, "eva.evolver_max_failure_rate must be in [0, 1]"),
        (0 < args.near_duplicate_threshold <= 1, "eva.near_duplicate_threshold must be in (0, 1]"),
        (args.rewriter_max_length_ratio >= 1, "eva.rewriter_max_length_ratio must be >= 1"),
        (args.length_penalty >= 0, "eva.length_penalty must be >= 0"),
        (0 <= args.evolved_min_words <= (args.evolved_max_words if args.evolved_max_words is not None
                                         else args.evolved_min_words),
         "eva.evolved_min_words must be >= 0 and <= eva.evolved_max_words"),
        (args.eval_samples >= 1, "eva.eval_samples must be >= 1"),
        (args.eval_size is None or args.eval_size >= 1, "eva.eval_size must be >= 1 or null"),
        (args.prompts_per_iteration is None or args.prompts_per_iteration >= 1,
         "eva.prompts_per_iteration must be >= 1 or null"),
        (args.reference in REFERENCES, f"eva.reference must be one of: {', '.join(REFERENCES)}"),
        (0 <= args.warmup_iterations < args.iterations,
         "eva.warmup_iterations must be >= 0 and < eva.iterations (the creator needs a round of its own)"),
        (args.creator_input in CREATOR_INPUTS, f"eva.creator_input must be one of: {', '.join(CREATOR_INPUTS)}"),
        (args.buffer in BUFFERS, f"eva.buffer must be one of: {', '.join(BUFFERS)}"),
        (args.splits in SPLITS, f"eva.splits must be one of: {', '.join(SPLITS)}"),
        (args.generation.temperature > 0,
         "eva.generation.temperature must be > 0: several responses per prompt need sampling"),
        (args.judge_size is None or args.judge_size >= 1, "eva.judge_size must be >= 1 or null"),
        (args.eval_temperature is None or args.eval_temperature >= 0, "eva.eval_temperature must be >= 0 or null"),
        (args.seed is None or 0 <= args.seed <= 2**32 - 1, "eva.seed must be in [0, 2**32 - 1] or null"),
        (args.collective_timeout is None or args.collective_timeout >= 1,
         "eva.collective_timeout must be >= 1 (seconds) or null"),
        (args.creator_reward_model is not None or (args.creator_reward_type is None
                                                   and not args.creator_reward_options),
         "eva.creator_reward_type / creator_reward_options are set but eva.creator_reward_model is null; "
         "name the creator's reward model, or drop them (reward_model then scores for the creator too)"),
    ])


def takes_split(creator: str | None, args: EvaArguments, t: int) -> bool:
    """Whether round ``t`` draws a new seed split: every round without the creator (``creator: none``, a
    warm-up round), and a creator round with ``creator_input: fresh`` or in round 1 (``previous``: X_0)."""
    creator_on = creator == "eva" and t > args.warmup_iterations
    return not creator_on or args.creator_input == "fresh" or t == 1


def split_rounds(creator: str | None, args: EvaArguments) -> list[int]:
    """The rounds that draw a seed split, in order (split ``i`` is drawn by ``split_rounds(…)[i]``)."""
    return [t for t in range(1, args.iterations + 1) if takes_split(creator, args, t)]
