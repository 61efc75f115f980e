"""Offline ``vllm.LLM`` generation (optional extra ``eva-plugin[vllm]``, GPU only).

All ``n`` samples of a prompt come from one request (``SamplingParams(n=…)``); prompts are
rendered with the policy's own chat template; ``tensor_parallel_size`` and
``gpu_memory_utilization`` come from ``generation.options``. ``close()`` shuts the engine
down and frees GPU memory before the trainer starts.

Under ``accelerate launch`` with several processes every process builds an engine with
vLLM's ``external_launcher`` executor: each group of ``tensor_parallel_size`` consecutive
ranks is one engine and must be given the same prompts (``ranks_per_engine`` tells the
loop how to split work); the process group stays accelerate's and is not torn down.
"""

from __future__ import annotations

import gc
import logging

from eva_plugin.generation import Conversation, Generations, SamplingParams, render_prompt
from eva_plugin.generation.seeding import prompt_seeds
from eva_plugin.modeling import load_tokenizer

logger = logging.getLogger(__name__)


class VLLMBackend:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        model_kwargs: dict | None = None,
        **_: object,
    ) -> None:
        """``model_kwargs``: the recipe's loading keywords (``eva_plugin.modeling.model_kwargs``);
        vLLM takes ``revision`` (model and tokenizer) and ``quantization="bitsandbytes"`` for
        ``load_in_4bit``/``load_in_8bit``; it picks its own attention backend, so
        ``attn_implementation`` does not apply (``VLLM_ATTENTION_BACKEND`` sets it)."""
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("the vllm backend needs vLLM: pip install 'eva-plugin[vllm]'") from None
        loading = _vllm_loading(model_kwargs or {})
        self.tokenizer = load_tokenizer(str(model_path), trust_remote_code=trust_remote_code,
                                        revision=loading.get("revision"))
        kwargs = {"model": str(model_path), "tensor_parallel_size": int(tensor_parallel_size),
                  "gpu_memory_utilization": float(gpu_memory_utilization), "trust_remote_code": trust_remote_code,
                  "enable_prefix_caching": enable_prefix_caching, **loading}
        if dtype:
            kwargs["dtype"] = dtype
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        world = _world_size()
        self.external = world > 1
        self.ranks_per_engine = int(tensor_parallel_size) if self.external else 1
        if self.external:
            if world % self.ranks_per_engine:
                raise ValueError(f"tensor_parallel_size {tensor_parallel_size} does not divide the {world} "
                                 "processes; launch a multiple of it or change generation.options")
            # one engine per rank group, fed by this launch; the same seed on every rank of a group
            kwargs.update(distributed_executor_backend="external_launcher", seed=0)
        self.llm = LLM(**kwargs)

    def render(self, conversation: Conversation) -> str:
        return render_prompt(self.tokenizer, conversation)

    def generate(
        self, conversations: list[Conversation], n: int, params: SamplingParams, seeds: list[int] | None = None
    ) -> Generations:
        """``n`` samples per conversation, one request each, seeded per prompt (``seeds``)."""
        from vllm import SamplingParams as VLLMSamplingParams

        seeds = seeds if seeds is not None else prompt_seeds(params.seed, conversations)
        sampling = [VLLMSamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                       max_tokens=params.max_new_tokens, seed=seed) for seed in seeds]
        outputs = self.llm.generate([self.render(c) for c in conversations], sampling, use_tqdm=True)
        texts, finished, tokens = [], [], 0
        for request in outputs:  # vLLM returns results in input order
            texts.append([c.text.strip() for c in request.outputs])
            finished.append([c.finish_reason != "length" for c in request.outputs])
            tokens += sum(len(c.token_ids) for c in request.outputs)
        return Generations(texts, tokens, finished)

    def close(self) -> None:
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            if not self.external:  # under accelerate the process group is the trainer's
                destroy_distributed_environment()
        except ImportError:  # older / newer layouts: the engine teardown below still frees it
            pass
        del self.llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _vllm_loading(model_kwargs: dict) -> dict:
    """The ``vllm.LLM`` keywords for the recipe's loading keywords: ``revision`` and
    ``tokenizer_revision``; a bitsandbytes ``quantization_config`` → ``quantization="bitsandbytes"``
    (vLLM quantizes in-flight to 4 bit; 8-bit loading is not offered, so it is refused)."""
    out: dict = {}
    revision = model_kwargs.get("revision")
    if revision:
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
