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


def test_vllm_engine_survives_rounds_sleeps_reloads_and_frees_memory(tmp_path):
    """The real lifecycle: build -> generate(n=4) -> close (sleep) -> reload from a new path ->
    generate again; memory back near the baseline while asleep; torch.distributed usable after."""
    import shutil

    import torch.distributed as dist

    from eva_plugin import embedded
    from eva_plugin.generation import SamplingParams
    from eva_plugin.generation import vllm_backend as vb

    source = embedded.smollm2_checkpoint()
    free_before, _ = torch.cuda.mem_get_info()
    backend = vb.VLLMBackend(str(source), dtype="bfloat16", gpu_memory_utilization=0.3)
    convs = [[{"role": "user", "content": "Name a prime number."}], [{"role": "user", "content": "Say hello."}]]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=1)
    gens = backend.generate(convs, 4, params)
    assert [len(t) for t in gens.texts] == [4, 4] and gens.num_tokens > 0
    assert all(isinstance(f, bool) for fs in gens.finished for f in fs)
    ids = backend.prompt_ids(convs[0])
    tok = backend.tokenizer
    if tok.bos_token_id is not None:
        assert ids[:2] != [tok.bos_token_id] * 2  # no double BOS
    backend.close()  # asleep (level 2), not destroyed
    free_asleep, _ = torch.cuda.mem_get_info()
    assert free_asleep > free_before * 0.9  # the engine gave its memory back

    checkpoint = shutil.copytree(source, tmp_path / "iter_1")
    again = vb.VLLMBackend(str(checkpoint), dtype="bfloat16", gpu_memory_utilization=0.3)
    assert again.llm is backend.llm  # woken and reloaded, not rebuilt
    regen = again.generate(convs, 4, params)
    assert regen.texts == gens.texts  # the same weights and seeds: the same samples
    again.close()
    vb.shutdown_engines()
    assert torch.cuda.mem_get_info()[0] > free_before * 0.9
    if dist.is_initialized():  # whoever created the default group still has it
        dist.barrier()
