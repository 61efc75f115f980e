"""The vLLM backend against a stand-in ``vllm`` module (vLLM needs a GPU; none here).

The stand-in mimics the slice of vLLM's offline API the backend uses — ``LLM(...)``,
``SamplingParams(n, temperature, top_p, max_tokens, seed)``, ``LLM.generate(prompts,
params, use_tqdm)`` (one ``SamplingParams`` for all prompts or a list, one per prompt)
returning ``RequestOutput``s in input order whose ``outputs`` are
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
from eva_plugin.generation.seeding import prompt_seeds


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
            per_prompt = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            if len(per_prompt) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
            return [RequestOutput(p, [CompletionOutput(k, f" answer {k} ", [1] * (k + 2),
                                                       "length" if k == 1 else "stop")
                                      for k in range(sp.n)]) for p, sp in zip(prompts, per_prompt)]

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
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=5)
    gens = backend.generate(convs, 3, params)
    (prompts, sps), = fake_vllm["generate"]
    assert prompts == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                       "<|im_start|>user\nname a prime<|im_end|>\n<|im_start|>assistant\n"]  # the chat template
    assert [(sp.n, sp.temperature, sp.top_p, sp.max_tokens) for sp in sps] == [(3, 0.7, 0.9, 32)] * 2
    assert [sp.seed for sp in sps] == prompt_seeds(5, convs)  # seeded per prompt: the same on any rank
    assert sps[0].seed != sps[1].seed
    assert gens.texts == [["answer 0", "answer 1", "answer 2"]] * 2
    assert gens.finished == [[True, False, True]] * 2 and gens.num_tokens == 2 * (2 + 3 + 4)
    backend.close()
    assert fake_vllm["destroyed"] == ["model_parallel", "distributed"]


def test_under_several_processes_each_rank_group_is_one_external_launcher_engine(fake_vllm, models, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    backend = plugins.get("backends", "vllm")(str(models["policy"]), tensor_parallel_size=2)
    init, = fake_vllm["init"]
    assert init["distributed_executor_backend"] == "external_launcher" and init["tensor_parallel_size"] == 2
    assert backend.ranks_per_engine == 2
    backend.close()
    assert fake_vllm["destroyed"] == ["model_parallel"]  # accelerate's process group is left alone
    with pytest.raises(ValueError, match="does not divide the 4 processes"):
        plugins.get("backends", "vllm")(str(models["policy"]), tensor_parallel_size=3)


def test_missing_vllm_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'eva-plugin\[vllm\]'"):
        plugins.get("backends", "vllm")(str(models["policy"]))


def test_recipe_revision_and_4bit_reach_the_engine(fake_vllm, models):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True)
    plugins.get("backends", "vllm")(str(models["policy"]),
                                    model_kwargs={"revision": "main", "attn_implementation": "eager",
                                                  "quantization_config": quant, "device_map": {"": 0}})
    (init,) = fake_vllm["init"]
    assert init["revision"] == init["tokenizer_revision"] == "main"
    assert init["quantization"] == "bitsandbytes"
    assert "attn_implementation" not in init and "device_map" not in init  # not vLLM keywords


def test_8bit_is_refused_by_the_vllm_backend(fake_vllm, models):
    from transformers import BitsAndBytesConfig

    with pytest.raises(ValueError, match="8 bit"):
        plugins.get("backends", "vllm")(str(models["policy"]),
                                        model_kwargs={"quantization_config": BitsAndBytesConfig(load_in_8bit=True)})
