"""The vLLM backend against a stand-in ``vllm`` module (vLLM needs a GPU; none here).

The stand-in mimics the slice of vLLM's offline API the backend uses — ``LLM(...)``,
``SamplingParams(n, temperature, top_p, max_tokens, seed)``, ``LLM.generate(prompts,
params, use_tqdm)`` returning ``RequestOutput``s in input order whose ``outputs`` are
``CompletionOutput``s with ``text``, ``token_ids`` and ``finish_reason`` — and records
every call. What it cannot show: real vLLM sampling, tensor parallelism, memory release.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from eva_plugin import plugins
from eva_plugin.generation import SamplingParams


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)


@pytest.fixture
def fake_vllm(monkeypatch):
    calls: dict[str, list] = {"init": [], "generate": [], "destroyed": []}

    class VSamplingParams:
        def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None):
            self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed

    class LLM:
        def __init__(self, **kwargs):
            calls["init"].append(kwargs)

        def generate(self, prompts, sampling_params, use_tqdm=True):
            calls["generate"].append((list(prompts), sampling_params))
            return [RequestOutput(p, [CompletionOutput(k, f" answer {k} ", [1] * (k + 2),
                                                       "length" if k == 1 else "stop")
                                      for k in range(sampling_params.n)]) for p in prompts]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, VSamplingParams
    dist = types.ModuleType("vllm.distributed")
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.destroy_model_parallel = lambda: calls["destroyed"].append("model_parallel")
    state.destroy_distributed_environment = lambda: calls["destroyed"].append("distributed")
    for name, module in {"vllm": vllm, "vllm.distributed": dist, "vllm.distributed.parallel_state": state}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_one_request_per_prompt_with_n_samples(fake_vllm, models):
    backend = plugins.get("backends", "vllm")(str(models["policy"]), dtype="bfloat16", tensor_parallel_size=4,
                                              gpu_memory_utilization=0.7)
    assert fake_vllm["init"] == [{"model": str(models["policy"]), "tensor_parallel_size": 4,
                                  "gpu_memory_utilization": 0.7, "trust_remote_code": False,
                                  "enable_prefix_caching": True, "dtype": "bfloat16"}]
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "name a prime"}]]
    gens = backend.generate(convs, 3, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=5))
    (prompts, sp), = fake_vllm["generate"]
    assert prompts == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                       "<|im_start|>user\nname a prime<|im_end|>\n<|im_start|>assistant\n"]  # the chat template
    assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed) == (3, 0.7, 0.9, 32, 5)
    assert gens.texts == [["answer 0", "answer 1", "answer 2"]] * 2
    assert gens.finished == [[True, False, True]] * 2 and gens.num_tokens == 2 * (2 + 3 + 4)
    backend.close()
    assert fake_vllm["destroyed"] == ["model_parallel", "distributed"]


def test_missing_vllm_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'eva-plugin\[vllm\]'"):
        plugins.get("backends", "vllm")(str(models["policy"]))
