"""Built-in generation backends, imported (with torch, vLLM or requests) only when one is built."""

from __future__ import annotations

from collections.abc import Callable

from eva_plugin import hookimpl
from eva_plugin.default_plugins import Lazy
from eva_plugin.generation import options


@hookimpl
def register_backends(register: Callable) -> None:
    register("transformers", Lazy("eva_plugin.generation.transformers_backend:TransformersBackend",
                                  options.TransformersOptions))
    register("openai", Lazy("eva_plugin.generation.openai_backend:OpenAICompatibleBackend", options.OpenAIOptions))
    register("vllm", Lazy("eva_plugin.generation.vllm_backend:VLLMBackend", options.VLLMOptions))
