"""Generation backends: sample ``n`` responses per prompt from a causal LM.

A backend is built by a factory registered under a name (``transformers`` built in)
and offers ``generate(conversations, n, params) -> Generations`` and ``close()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from eva_plugin import hookimpl

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
    (returned as empty texts)."""

    texts: list[list[str]]
    num_tokens: int = 0
    finished: list[list[bool]] = field(default_factory=list)
    failed: int = 0


class Backend(Protocol):
    def generate(self, conversations: list[Conversation], n: int, params: SamplingParams) -> Generations: ...

    def close(self) -> None: ...


@hookimpl
def register_backends(register):
    from eva_plugin.generation.openai_backend import OpenAICompatibleBackend
    from eva_plugin.generation.transformers_backend import TransformersBackend
    from eva_plugin.generation.vllm_backend import VLLMBackend

    register("transformers", TransformersBackend)
    register("openai", OpenAICompatibleBackend)
    register("vllm", VLLMBackend)
