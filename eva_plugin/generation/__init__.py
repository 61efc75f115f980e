"""Generation backends: sample ``n`` responses per prompt from a causal LM.

A backend is built by a factory registered under a name (``transformers`` built in)
and offers ``generate(conversations, n, params, seeds=None) -> Generations`` and ``close()``;
``seeds`` (one per conversation, from ``generation.seeding.prompt_seeds``) make a prompt's
samples independent of the batch and the process it lands in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 2048
    seed: int = 42

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generations:
    """``texts[i]`` holds the responses to prompt ``i``; ``num_tokens`` counts generated tokens;
    ``finished[i][j]`` says whether response ``j`` ended on its own (False: cut at the token limit;
    empty when a backend cannot tell); ``failed`` counts responses a remote server never gave
    (returned as empty texts); ``dropped_too_long`` counts prompts longer than the engine's context
    that were never sent (their ``n`` empty responses are in ``failed``). A remote backend also fills
    ``usage`` (``requests``, ``requests_cached``, ``retries``, ``requests_failed``, ``prompt_tokens``,
    ``completion_tokens`` and, with prices, ``cost``) and ``last_error`` (why the last failed request failed)."""

    texts: list[list[str]]
    num_tokens: int = 0
    finished: list[list[bool]] = field(default_factory=list)
    failed: int = 0
    dropped_too_long: int = 0
    usage: dict[str, float] = field(default_factory=dict)
    last_error: str = ""


#: The counters of ``Generations.usage`` (``cost`` is added when a price is set), in the report's order.
USAGE_KEYS = ("requests", "requests_cached", "retries", "requests_failed", "prompt_tokens", "completion_tokens")


def usage_stats(usage: dict[str, float]) -> dict[str, float]:
    """A remote backend's ``usage`` as a manifest shows it: whole counts, the cost to 6 decimals."""
    return {key: round(value, 6) if key == "cost" else int(value) for key, value in usage.items()}


def render_prompt(tokenizer, conversation: Conversation) -> str:
    """The text a causal LM sees: its chat template with the generation prompt, else plain turns."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(turn["content"] for turn in conversation) + "\n\n"


def last_user_turn(conversation: Conversation) -> str:
    """The content of the conversation's last user message (the prompt being answered)."""
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


class Backend(Protocol):
    """What the loop uses of a backend (``BackendBase`` gives the attributes their usual values).

    ``exclusive``: the backend keeps the accelerator to itself (vLLM reserves most of the GPU), so
    the loop frees every other model before it is used. ``remote``: it sends requests to a server
    (the openai backend): only the main process calls ``generate``, so its concurrency limit is the
    run's, and the others get the result; ``use_cache(folder)`` keeps its answers there for a rerun
    (None: stop keeping them). ``ranks_per_engine``: consecutive processes
    that share one engine (tensor parallel under ``external_launcher``) and so get the same prompts.
    ``generate``: ``n`` samples per conversation; ``seeds[i]`` is prompt ``i``'s seed, and a prompt's
    samples should depend on its seed alone. ``pause``: make room for another model of this round
    (these weights are used again next). ``close``: done with these weights (before training).
    """

    exclusive: bool
    ranks_per_engine: int
    remote: bool

    def generate(self, conversations: list[Conversation], n: int, params: SamplingParams,
                 seeds: list[int] | None = None) -> Generations: ...

    def pause(self) -> None: ...

    def use_cache(self, folder: Path | None) -> None: ...

    def close(self) -> None: ...


class BackendBase:
    """The ``Backend`` attributes most backends share: one process per engine, other models may stay,
    nothing to keep when paused, a local model (no answers to cache)."""

    exclusive: bool = False
    ranks_per_engine: int = 1
    remote: bool = False

    def use_cache(self, folder: Path | None) -> None:
        """A local model's samples cost no money: nothing is cached."""

    def pause(self) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError
