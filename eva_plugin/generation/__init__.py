"""Generation backends: sample ``n`` responses per prompt from a causal LM.

A backend is built by a factory registered under a name (``transformers`` built in)
and offers ``generate(conversations, n, params, seeds=None) -> Generations`` and ``close()``;
``seeds`` (one per conversation, from ``generation.seeding.prompt_seeds``) make a prompt's
samples independent of the batch and the process it lands in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    that were never sent (their ``n`` empty responses are in ``failed``)."""

    texts: list[list[str]]
    num_tokens: int = 0
    finished: list[list[bool]] = field(default_factory=list)
    failed: int = 0
    dropped_too_long: int = 0


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
    the loop frees every other model before it is used. ``ranks_per_engine``: consecutive processes
    that share one engine (tensor parallel under ``external_launcher``) and so get the same prompts.
    ``generate``: ``n`` samples per conversation; ``seeds[i]`` is prompt ``i``'s seed, and a prompt's
    samples should depend on its seed alone. ``pause``: make room for another model of this round
    (these weights are used again next). ``close``: done with these weights (before training).
    """

    exclusive: bool
    ranks_per_engine: int

    def generate(self, conversations: list[Conversation], n: int, params: SamplingParams,
                 seeds: list[int] | None = None) -> Generations: ...

    def pause(self) -> None: ...

    def close(self) -> None: ...


class BackendBase:
    """The ``Backend`` attributes most backends share: one process per engine, other models may stay,
    nothing to keep when paused."""

    exclusive: bool = False
    ranks_per_engine: int = 1

    def pause(self) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError
