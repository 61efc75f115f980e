"""Offline ``vllm.LLM`` generation (optional extra ``eva-plugin[vllm]``, GPU only).

All ``n`` samples of a prompt come from one request (``SamplingParams(n=…)``); prompts are
rendered with the policy's own chat template; ``tensor_parallel_size`` and
``gpu_memory_utilization`` come from ``generation.options``. ``close()`` shuts the engine
down and frees GPU memory before the trainer starts.
"""

from __future__ import annotations

import gc
import logging

from eva_plugin.generation import Conversation, Generations, SamplingParams, render_prompt
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
        **_: object,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("the vllm backend needs vLLM: pip install 'eva-plugin[vllm]'") from None
        self.tokenizer = load_tokenizer(str(model_path), trust_remote_code=trust_remote_code)
        kwargs = {"model": str(model_path), "tensor_parallel_size": int(tensor_parallel_size),
                  "gpu_memory_utilization": float(gpu_memory_utilization), "trust_remote_code": trust_remote_code,
                  "enable_prefix_caching": enable_prefix_caching}
        if dtype:
            kwargs["dtype"] = dtype
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        self.llm = LLM(**kwargs)

    def render(self, conversation: Conversation) -> str:
        return render_prompt(self.tokenizer, conversation)

    def generate(self, conversations: list[Conversation], n: int, params: SamplingParams) -> Generations:
        from vllm import SamplingParams as VLLMSamplingParams

        sampling = VLLMSamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                      max_tokens=params.max_new_tokens, seed=params.seed)
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
            destroy_distributed_environment()
        except ImportError:  # older / newer layouts: the engine teardown below still frees it
            pass
        del self.llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
