"""The options each built-in backend declares (``eva.<block>.options`` in a recipe), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eva_plugin.options import NoOptions, Options, option

TransformersOptions = NoOptions  # everything it needs is the run's (``options.ModelContext``)


@dataclass(frozen=True)
class VLLMOptions(Options):
    """``vllm.LLM`` engine settings; any other engine keyword goes in ``engine_args``."""

    tensor_parallel_size: int = option(1, "GPUs one engine spans (vLLM tensor parallelism).", ge=1)
    gpu_memory_utilization: float | None = option(None, "Share of the accelerator's memory the engine reserves "
                                                  "(on CPU: of the memory node); null: vLLM's 0.9 on a GPU, "
                                                  "a KV cache sized from free memory on CPU.", gt=0, le=1)
    kv_cache_memory_bytes: int | None = option(None, "KV cache size in bytes (overrides gpu_memory_utilization); "
                                               "null: see gpu_memory_utilization.", ge=1)
    max_model_len: int | None = option(None, "Context length of the engine; null: the model's.", ge=1)
    max_num_seqs: int | None = option(None, "Most sequences the engine runs at once; null: vLLM's default.", ge=1)
    enable_prefix_caching: bool = option(True, "Reuse the KV cache of shared prompt prefixes.")
    enforce_eager: bool | None = option(None, "Run without CUDA graphs; null: vLLM's default.")
    engine_args: dict[str, Any] = option({}, "More `vllm.LLM` keywords, passed as they are (checked against "
                                         "vLLM's `EngineArgs` when the engine is built).")


@dataclass(frozen=True)
class OpenAIOptions(Options):
    """Where the OpenAI-compatible server is and how requests are sent."""

    #: added with the request cache: they decide no answer (the older sending options stay in fingerprints,
    #: so that the run folders made before keep theirs)
    not_fingerprinted = frozenset({"requests_per_minute", "max_wait", "prompt_price_per_1k",
                                   "completion_price_per_1k"})

    base_url: str | None = option(None, "The server's /v1 address, e.g. http://localhost:8000/v1 (required).")
    model: str | None = option(None, "Model name sent to the server; null: the run's model path/name.")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key (never the key itself).")
    concurrency: int = option(8, "Requests in flight at once, for the whole run (only the main process sends).",
                              ge=1)
    requests_per_minute: float | None = option(None, "At most this many requests (retries included) start per "
                                                     "minute; null: no limit but `concurrency`.", gt=0)
    timeout: float = option(120.0, "Seconds before a request is abandoned and retried.", gt=0)
    max_retries: int = option(4, "Retries per request (connection errors, timeouts, 408/409/429, 5xx).", ge=0)
    backoff: float = option(1.0, "First retry delay in seconds without a Retry-After from the server; doubles "
                                 "each retry, with jitter.", ge=0)
    max_wait: float = option(60.0, "Longest wait before a retry, in seconds (a longer Retry-After is cut to it).",
                             ge=0)
    prompt_price_per_1k: float | None = option(None, "Price of 1000 prompt tokens; with it (or the completion "
                                                     "price) manifests and `eva report` show the cost.", ge=0)
    completion_price_per_1k: float | None = option(None, "Price of 1000 completion tokens.", ge=0)
