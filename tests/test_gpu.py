"""GPU-only checks (skipped here): the real vLLM engine on the embedded SmolLM2 checkpoint.

Run on a CUDA machine with vLLM installed; docs/gpu.md has the commands.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs a GPU and vLLM"
)


def test_vllm_backend_samples_n_per_prompt_and_frees_memory():
    from eva_plugin import embedded
    from eva_plugin.generation import SamplingParams
    from eva_plugin.generation.vllm_backend import VLLMBackend

    free_before, _ = torch.cuda.mem_get_info()
    backend = VLLMBackend(str(embedded.smollm2_checkpoint()), dtype="bfloat16", gpu_memory_utilization=0.3)
    convs = [[{"role": "user", "content": "Name a prime number."}], [{"role": "user", "content": "Say hello."}]]
    gens = backend.generate(convs, 4, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=1))
    assert [len(t) for t in gens.texts] == [4, 4] and gens.num_tokens > 0
    assert all(isinstance(f, bool) for fs in gens.finished for f in fs)
    backend.close()
    free_after, _ = torch.cuda.mem_get_info()
    assert free_after > free_before * 0.9  # the engine gave its memory back
