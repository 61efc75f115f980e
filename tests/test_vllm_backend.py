"""The vLLM backend's GPU-only paths against a stand-in ``vllm`` module: sleep mode (vLLM's CPU build
refuses it), bitsandbytes loading and ranks of an ``external_launcher`` group. Everything the CPU
build can run is tested against the real engine in ``test_vllm_engine.py``.

The stand-in stands for vLLM 0.22–0.31 on a CUDA platform (``current_platform`` has sleep mode and
is not the CPU) and mimics the slice of the offline API the backend uses and its lifecycle:
``LLM(**engine_args)`` (one per process; sleep mode on), ``LLM.generate(prompts,
params, use_tqdm)`` taking ``{"prompt_token_ids": [...]}`` prompts and refusing one longer
than ``max_model_len`` (as vLLM does, for the whole batch), ``sleep(level)``,
``wake_up(tags)`` (weights, then KV cache), ``collective_rpc(method, kwargs=…)`` with the
worker's ``reload_weights(weights_path, is_checkpoint_format)``, ``reset_prefix_cache()``,
``llm_engine.model_config.max_model_len`` — and records every call. Like vLLM's ``EngineArgs`` it
refuses a keyword the engine does not have (the list below is a subset of vLLM 0.31's fields).
What it cannot show: real vLLM sampling, tensor parallelism, memory release, weights really reloaded.
"""

from __future__ import annotations

import shutil
import sys
import types
from dataclasses import dataclass, field, make_dataclass

import pytest

from eva_plugin import plugins
from eva_plugin.generation import SamplingParams
from eva_plugin.generation import vllm_engines as engines
from eva_plugin.generation.seeding import prompt_seeds
from eva_plugin.options import ModelContext

CONVS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "name a prime"}]]
PARAMS = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=5)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


#: keywords of vLLM 0.31's ``EngineArgs`` the backend may pass (a subset of the real ones)
ENGINE_ARGS = ("model", "tokenizer", "tokenizer_revision", "revision", "trust_remote_code", "dtype", "seed",
               "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "max_num_seqs",
               "enable_prefix_caching", "enforce_eager", "swap_space", "kv_cache_dtype", "quantization",
               "distributed_executor_backend", "enable_sleep_mode")


def make(path, context: ModelContext | None = None, **options):
    """The vllm backend as the loop builds it: the recipe's options parsed, the run's context."""
    parsed = plugins.parse_options("backends", "vllm", options, "eva.generation.options")
    return plugins.build("backends", "vllm", str(path), options=parsed, context=context or ModelContext())


@pytest.fixture
def fake_vllm(monkeypatch):
    calls: dict[str, list] = {"init": [], "generate": [], "lifecycle": [], "destroyed": []}

    class VSamplingParams:
        def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None):
            self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed

    class LLM:
        def __init__(self, **kwargs):
            unknown = sorted(set(kwargs) - set(ENGINE_ARGS))
            if unknown:  # what EngineArgs(**kwargs) does with a keyword it does not have
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{unknown[0]}'")
            calls["init"].append(kwargs)
            self.kwargs = kwargs
            self.asleep = {"weights": False, "kv_cache": False}
            self.weights = kwargs["model"]
            self.llm_engine = types.SimpleNamespace(
                model_config=types.SimpleNamespace(max_model_len=kwargs.get("max_model_len", 64)))

        def sleep(self, level=1):
            assert self.kwargs.get("enable_sleep_mode"), "sleep mode is not enabled"
            calls["lifecycle"].append(("sleep", level))
            self.asleep = {"weights": True, "kv_cache": True}
            if level == 2:
                self.weights = None  # discarded

        def wake_up(self, tags=None):
            calls["lifecycle"].append(("wake_up", tuple(tags or ("weights", "kv_cache"))))
            for tag in tags or ("weights", "kv_cache"):
                self.asleep[tag] = False

        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            calls["lifecycle"].append(("collective_rpc", method, dict(kwargs or {})))
            assert method == "reload_weights" and not self.asleep["weights"], "weights must be awake to load"
            self.weights = kwargs["weights_path"]

        def reset_prefix_cache(self):
            calls["lifecycle"].append(("reset_prefix_cache",))

        def generate(self, prompts, sampling_params, use_tqdm=True):
            assert not any(self.asleep.values()) and self.weights is not None, "generate on a sleeping engine"
            calls["generate"].append((list(prompts), sampling_params, self.weights))
            per_prompt = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            if len(per_prompt) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
            limit = self.llm_engine.model_config.max_model_len
            for p in prompts:
                if len(p["prompt_token_ids"]) > limit:  # vLLM aborts the whole call
                    raise ValueError(f"The decoder prompt (length {len(p['prompt_token_ids'])}) is longer "
                                     f"than the maximum model length of {limit}.")
            return [RequestOutput(p["prompt_token_ids"],
                                  [CompletionOutput(k, f" answer {k} ", [1] * (k + 2), "length" if k == 1 else "stop")
                                   for k in range(sp.n)]) for p, sp in zip(prompts, per_prompt)]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, VSamplingParams
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = make_dataclass("EngineArgs", [(name, object, field(default=None)) for name in ENGINE_ARGS])
    dist = types.ModuleType("vllm.distributed")
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.destroy_model_parallel = lambda: calls["destroyed"].append("model_parallel")
    state.destroy_distributed_environment = lambda: calls["destroyed"].append("distributed")
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_sleep_mode_available=lambda: True, is_cpu=lambda: False)
    modules = {"vllm": vllm, "vllm.distributed": dist, "vllm.distributed.parallel_state": state,
               "vllm.engine": types.ModuleType("vllm.engine"), "vllm.engine.arg_utils": arg_utils,
               "vllm.platforms": platforms}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(engines, "ENGINES", {})
    monkeypatch.setattr(engines, "RETIRED", [])
    return calls


def test_one_request_per_prompt_with_n_samples_from_token_ids(fake_vllm, models):
    backend = make(models["policy"], ModelContext(dtype="bfloat16", batch_size=8, device="cuda:0"),
                   tensor_parallel_size=4, gpu_memory_utilization=0.7)
    assert fake_vllm["init"] == [{"model": str(models["policy"]), "tensor_parallel_size": 4,
                                  "gpu_memory_utilization": 0.7, "trust_remote_code": False,
                                  "enable_prefix_caching": True, "enable_sleep_mode": True, "dtype": "bfloat16"}]
    gens = backend.generate(CONVS, 3, PARAMS)
    (prompts, sps, _), = fake_vllm["generate"]
    tok = backend.tokenizer
    texts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nname a prime<|im_end|>\n<|im_start|>assistant\n"]  # the chat template
    assert [tok.decode(p["prompt_token_ids"]) for p in prompts] == texts
    assert [p["prompt_token_ids"] for p in prompts] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [(sp.n, sp.temperature, sp.top_p, sp.max_tokens) for sp in sps] == [(3, 0.7, 0.9, 32)] * 2
    assert [sp.seed for sp in sps] == prompt_seeds(5, CONVS)  # seeded per prompt: the same on any rank
    assert sps[0].seed != sps[1].seed
    assert gens.texts == [["answer 0", "answer 1", "answer 2"]] * 2
    assert gens.finished == [[True, False, True]] * 2 and gens.num_tokens == 2 * (2 + 3 + 4)
    assert gens.failed == gens.dropped_too_long == 0


def test_a_template_that_writes_bos_gets_exactly_one(fake_vllm, models):
    backend = make(models["policy"])
    tok = backend.tokenizer
    if tok.bos_token is None:
        tok.add_special_tokens({"bos_token": "<|bos|>"})
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ids = backend.prompt_ids(CONVS[0])
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    rendered = tok.apply_chat_template(CONVS[0], tokenize=False, add_generation_prompt=True)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_one_engine_for_the_run_slept_at_close_and_reloaded_with_each_round(fake_vllm, models, tmp_path):
    round1 = make(models["policy"], gpu_memory_utilization=0.5)
    round1.generate(CONVS, 2, PARAMS)
    round1.close()
    assert fake_vllm["lifecycle"] == [("sleep", 2)]  # not destroyed: weights discarded, KV cache freed
    assert fake_vllm["destroyed"] == []

    checkpoint = str(shutil.copytree(models["policy"], tmp_path / "iter_1" / "policy"))  # the next round's
    round2 = make(checkpoint, gpu_memory_utilization=0.5)
    assert len(fake_vllm["init"]) == 1 and round2.llm is round1.llm  # built once
    assert fake_vllm["lifecycle"][1:] == [
        ("wake_up", ("weights",)),
        ("collective_rpc", "reload_weights", {"weights_path": checkpoint, "is_checkpoint_format": True}),
        ("wake_up", ("kv_cache",)),
        ("reset_prefix_cache",),
    ]
    round2.generate(CONVS, 2, PARAMS)
    assert [weights for _, _, weights in fake_vllm["generate"]] == [str(models["policy"]), checkpoint]
    round2.close()
    assert fake_vllm["lifecycle"][-1] == ("sleep", 2)

    make(models["policy"], gpu_memory_utilization=0.3)  # other engine settings: another engine
    assert len(fake_vllm["init"]) == 2


def test_a_pause_sleeps_at_level_one_and_the_same_weights_wake_without_a_reload(fake_vllm, models, tmp_path):
    """creator → reward model → solver of one round: the engine makes room (level 1: weights offloaded,
    not discarded) and wakes with the same weights, no read of the checkpoint; another checkpoint
    after a pause is reloaded."""
    first = make(models["policy"])
    first.pause()
    assert fake_vllm["lifecycle"] == [("sleep", 1)]
    again = make(models["policy"])
    again.generate(CONVS, 1, PARAMS)
    assert fake_vllm["lifecycle"][1:] == [("wake_up", ("weights", "kv_cache"))] and again.llm is first.llm
    again.close()
    again.close()  # already at level 2: not slept twice
    assert fake_vllm["lifecycle"][2:] == [("sleep", 2)]
    other = str(shutil.copytree(models["policy"], tmp_path / "other"))
    make(other).pause()
    assert ("collective_rpc", "reload_weights", {"weights_path": other, "is_checkpoint_format": True}) in \
        fake_vllm["lifecycle"]
    assert fake_vllm["lifecycle"][-1] == ("sleep", 1)


@pytest.mark.parametrize("world", [1, 4])
def test_shutdown_leaves_the_default_process_group_alone(fake_vllm, models, monkeypatch, world):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    destroyed = []
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: destroyed.append(a))
    backend = make(models["policy"], tensor_parallel_size=2 if world > 1 else 1)
    backend.close()
    engines.release_engines()
    assert destroyed == []  # the default process group is left to its owner
    assert fake_vllm["lifecycle"] == [("sleep", 2)]  # already asleep: not slept twice
    if world > 1:  # under external_launcher: vLLM's own groups go, the engine is kept referenced until exit
        assert fake_vllm["destroyed"] == ["model_parallel"] and not engines.ENGINES
        assert [backend.llm] == engines.RETIRED
    else:  # one process: the engine sleeps and stays for a later run in this process
        assert fake_vllm["destroyed"] == [] and len(engines.ENGINES) == 1 and not engines.RETIRED
    engines.release_engines()  # a second call is a no-op
    assert fake_vllm["lifecycle"] == [("sleep", 2)]


def test_under_several_processes_each_rank_group_is_one_external_launcher_engine(fake_vllm, models, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    backend = make(models["policy"], tensor_parallel_size=2)
    init, = fake_vllm["init"]
    assert init["distributed_executor_backend"] == "external_launcher" and init["tensor_parallel_size"] == 2
    assert init["seed"] == 0 and init["enable_sleep_mode"] is True
    assert backend.ranks_per_engine == 2
    backend.close()
    assert fake_vllm["destroyed"] == []  # asleep, not torn down: accelerate's process group is left alone
    with pytest.raises(ValueError, match="does not divide the 4 processes"):
        make(models["policy"], tensor_parallel_size=3)


def test_missing_vllm_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'eva-plugin\[vllm\]'"):
        make(models["policy"])


def test_recipe_revision_and_4bit_reach_the_engine(fake_vllm, models):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True)
    make(models["policy"], ModelContext(model_kwargs={"revision": "v2", "attn_implementation": "eager",
                                                       "quantization_config": quant, "device_map": {"": 0}}))
    (init,) = fake_vllm["init"]
    assert init["quantization"] == "bitsandbytes"
    assert "revision" not in init  # a local folder has no revisions
    assert "attn_implementation" not in init and "device_map" not in init  # not vLLM keywords
    from eva_plugin.generation.vllm_backend import _vllm_loading

    assert _vllm_loading({"revision": "v2"}) == {"revision": "v2", "tokenizer_revision": "v2"}  # a hub model's


def test_8bit_is_refused_by_the_vllm_backend(fake_vllm, models):
    from transformers import BitsAndBytesConfig

    with pytest.raises(ValueError, match="8 bit"):
        make(models["policy"],
             ModelContext(model_kwargs={"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}))
