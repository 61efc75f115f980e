"""The transformers generation backend and the reward models, on tiny random models."""

import json
import math

import pytest
import torch

from eva_plugin import plugins
from eva_plugin.generation import SamplingParams
from eva_plugin.generation.transformers_backend import TransformersBackend
from eva_plugin.rewards.embedding import EmbeddingSimilarityReward
from eva_plugin.rewards.sequence_classification import SequenceClassificationReward

CONVS = [[{"role": "user", "content": "write a poem"}],
         [{"role": "user", "content": "solve the equation 2 x + 3 = 11 step by step"}],
         [{"role": "user", "content": "hi"}]]


def test_backend_samples_n_per_prompt_and_counts_tokens(models):
    backend = TransformersBackend(str(models["policy"]), batch_size=2)
    gens = backend.generate(CONVS, 3, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1))
    assert [len(t) for t in gens.texts] == [3, 3, 3]
    assert 0 < gens.num_tokens <= 3 * 3 * 8
    assert [len(f) for f in gens.finished] == [3, 3, 3]
    cut = [t for ts, fs in zip(gens.texts, gens.finished) for t, f in zip(ts, fs) if not f]
    assert cut, "a random tiny model rarely stops within 8 tokens"
    again = backend.generate(CONVS, 3, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1))
    assert again.texts == gens.texts  # seeded


def test_left_padded_batches_match_one_by_one_greedy(models):
    backend = TransformersBackend(str(models["policy"]), batch_size=3)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    batched = backend.generate(CONVS, 1, greedy).texts
    single = [backend.generate([c], 1, greedy).texts[0] for c in CONVS]
    assert batched == single


def test_backend_renders_the_chat_template(models):
    backend = TransformersBackend(str(models["policy"]))
    assert backend.render(CONVS[2]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_sequence_classification_reward_matches_a_direct_forward(models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = SequenceClassificationReward(str(models["reward"]), batch_size=2)
    responses = [["a poem about waves", "no"], ["x = 4", "x = 4 because 2 x = 8", "x"], ["hello"]]
    scores = rm.score(CONVS, responses)
    assert [len(s) for s in scores] == [2, 3, 1]
    tok = AutoTokenizer.from_pretrained(models["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(models["reward"]).eval()
    text = tok.apply_chat_template(CONVS[1] + [{"role": "assistant", "content": "x = 4"}], tokenize=False)
    with torch.no_grad():
        direct = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert scores[1][0] == pytest.approx(direct, abs=1e-4)
    assert len({round(s, 6) for s in scores[1]}) == 3


def test_reward_model_without_pad_id_reads_the_real_last_token(tmp_path, models):
    """With no pad id in the config, batching must not change which token the head reads."""
    import shutil

    from transformers import AutoConfig

    folder = tmp_path / "rm_no_pad"
    shutil.copytree(models["reward"], folder)
    config = AutoConfig.from_pretrained(folder)
    config.pad_token_id = None
    config.save_pretrained(folder)
    responses = [["a poem about waves and the moon at night", "no"]]
    batched = SequenceClassificationReward(str(folder), batch_size=8).score(CONVS[:1], responses)[0]
    single = [SequenceClassificationReward(str(folder), batch_size=1).score(CONVS[:1], [[r]])[0][0]
              for r in responses[0]]
    assert batched == pytest.approx(single, abs=1e-5)


def test_length_sorted_token_budget_batches_equal_one_at_a_time(models):
    responses = [["a poem about waves and the moon at night over the sea", "no", "x"],
                 ["x = 4 because 2 x = 8 after subtracting 3", "4"], ["hello there, friend"]]
    budgeted = SequenceClassificationReward(str(models["reward"]), batch_size=8, max_batch_tokens=64)
    single = SequenceClassificationReward(str(models["reward"]), batch_size=1)
    assert [x for r in budgeted.score(CONVS, responses) for x in r] == pytest.approx(
        [x for r in single.score(CONVS, responses) for x in r], abs=1e-5)


def test_length_batches_respect_size_and_token_budget():
    from eva_plugin.batching import length_batches

    lengths = [5, 40, 12, 11, 3, 100, 12]
    batches = length_batches(lengths, batch_size=3, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the budget: alone
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


REMOTE_CODE = '''
from dataclasses import dataclass
import torch
from transformers import LlamaConfig, LlamaModel, PreTrainedModel
from transformers.utils import ModelOutput


class ScoreConfig(LlamaConfig):
    model_type = "score_llama"


@dataclass
class ScoreOutput(ModelOutput):
    score: torch.FloatTensor = None
    rewards: torch.FloatTensor = None


class ScoreModel(PreTrainedModel):
    config_class = ScoreConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.head = torch.nn.Linear(config.hidden_size, 3, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(-1) - 1
        rewards = self.head(hidden[torch.arange(hidden.shape[0]), last])
        return ScoreOutput(score=rewards.mean(-1), rewards=rewards)
'''


def test_remote_code_reward_model_with_score_field(tmp_path, models):
    """An ArmoRM-style checkpoint: custom code via ``auto_map``, output carries ``.score``."""
    from transformers import AutoTokenizer

    from eva_plugin.testing import _llama_config

    folder = tmp_path / "armo_like"
    folder.mkdir()
    (folder / "modeling_score.py").write_text(REMOTE_CODE)
    namespace: dict = {}
    exec(REMOTE_CODE, namespace)
    tok = AutoTokenizer.from_pretrained(models["reward"])
    config = namespace["ScoreConfig"](**_llama_config(tok).to_dict())
    config.auto_map = {"AutoConfig": "modeling_score.ScoreConfig",
                       "AutoModelForSequenceClassification": "modeling_score.ScoreModel"}
    torch.manual_seed(0)
    namespace["ScoreModel"](config).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForSequenceClassification"] == "modeling_score.ScoreModel"

    rm = SequenceClassificationReward(str(folder), trust_remote_code=True)
    scores = rm.score(CONVS[:1], [["a poem about waves", "no"]])
    assert type(rm.model).__name__ == "ScoreModel"
    assert len(scores[0]) == 2 and all(math.isfinite(s) for s in scores[0])


def test_embedding_reward_is_the_mean_pooled_cosine(models):
    from transformers import AutoModel, AutoTokenizer

    rm = EmbeddingSimilarityReward(str(models["encoder"]), guard=False)
    scores = rm.score(CONVS[:2], [["a poem about the sea", "write a poem"], ["x = 4"]])
    tok = AutoTokenizer.from_pretrained(models["encoder"])
    enc = AutoModel.from_pretrained(models["encoder"]).eval()

    def embed(text):
        batch = tok(text, return_tensors="pt")
        with torch.no_grad():
            return enc(**batch).last_hidden_state[0].mean(0)

    expected = torch.nn.functional.cosine_similarity(embed("write a poem"), embed("a poem about the sea"), dim=0)
    assert scores[0][0] == pytest.approx(expected.item(), abs=1e-5)
    assert scores[0][1] == pytest.approx(1.0, abs=1e-5)  # identical text
    assert len(scores[1]) == 1


def test_embedding_guard_floors_empty_short_and_echoed_answers(models):
    rm = EmbeddingSimilarityReward(str(models["encoder"]))
    prompt = "solve the equation 2 x + 3 = 11 step by step"
    answers = ["", "x = 4", "solve the equation 2 x + 3 = 11 step by step please",
               "subtract 3 from both sides to get 2 x = 8, then divide by 2: x = 4"]
    (scores,) = rm.score([[{"role": "user", "content": prompt}]], [answers])
    assert scores[:3] == [-1.0, -1.0, -1.0]
    assert scores[3] > -1.0
    assert max(range(4), key=lambda i: scores[i]) == 3


def test_every_builtin_reward_model_scores_when_built_as_the_run_builds_it(models):
    """Each built-in reward model, built as ``Run.reward_model`` builds it (``plugins.build`` with its
    parsed options and a ``ModelContext``), gives one finite reward per response. (The backends are
    built the same way elsewhere: ``transformers`` in every loop test, ``openai`` in
    test_openai_backend.py, ``vllm`` in test_vllm_backend.py.)"""
    from eva_plugin.options import ModelContext

    checkpoints = {"sequence_classification": models["reward"], "embedding": models["encoder"],
                   "pairwise": models["policy"], "pairrm": models["pairrm"]}  # a built-in added without one fails
    responses = [["a poem about the waves at night", "the sea is blue and wide"],
                 ["subtract 3 and divide by 2: x = 4", "x is four", "I do not know the answer"]]
    builtins = sorted(n for n, e in plugins.registry("reward_models").items() if e.source == plugins.BUILTIN)
    assert builtins
    for name in builtins:
        options = plugins.parse_options("reward_models", name, {}, "eva.reward_options")
        rm = plugins.build("reward_models", name, str(checkpoints[name]), options=options,
                           context=ModelContext(device="cpu"))
        try:
            scores = rm.score(CONVS[:2], responses)
        finally:
            rm.close()
        assert [len(s) for s in scores] == [2, 3], name
        assert all(math.isfinite(x) for s in scores for x in s), (name, scores)


def test_sampling_and_reward_models_load_whole_under_a_zero3_training_config(models):
    """With ZeRO-3, transformers partitions every later ``from_pretrained`` (``zero.Init``); our
    inference models must not be. DeepSpeed is not installed here: the stand-in below is the
    config object transformers consults (``is_zero3()``), and loading without our guard would
    try to import deepspeed."""
    from transformers.integrations import deepspeed as hf_deepspeed

    from eva_plugin.modeling import load_causal_lm

    class ZeRO3Config:
        def is_zero3(self) -> bool:
            return True

        def is_offload(self) -> bool:
            return False

    config = ZeRO3Config()
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        with pytest.raises(ImportError):  # what an unguarded load does here
            load_causal_lm(str(models["policy"]))
        backend = TransformersBackend(str(models["policy"]))
        reward = SequenceClassificationReward(str(models["reward"]))
        assert sum(p.numel() for p in backend.model.parameters()) > 0
        assert math.isfinite(reward.score([CONVS[0]], [["a poem"]])[0][0])
        assert hf_deepspeed.is_deepspeed_zero3_enabled()  # the trainer's config is back
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


# --- one device rule: every model on the process's device, every input on model.device ---------

def _no_accelerate_state(monkeypatch):
    from accelerate import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})


def test_pick_device_follows_accelerate_cpu_even_with_a_gpu(monkeypatch):
    from eva_plugin.modeling import pick_device, torch_dtype

    _no_accelerate_state(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert pick_device(None) == "cuda"  # no state, no request: the GPU
    assert torch_dtype("bfloat16") is torch.bfloat16
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # accelerate launch --cpu
    assert pick_device(None) == "cpu"
    assert pick_device("cuda:1") == "cuda:1"  # an explicit device wins
    assert torch_dtype("bfloat16") is torch.float32  # no bf16 for a CPU run
    assert torch_dtype("bfloat16", "cuda") is torch.bfloat16


def test_pick_device_asks_the_existing_accelerate_state(monkeypatch):
    from accelerate import PartialState

    from eva_plugin.modeling import pick_device

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(PartialState, "_shared_state", {"device": torch.device("cpu")})
    assert pick_device() == "cpu"  # a state created with cpu=True, on a GPU machine
    monkeypatch.setattr(PartialState, "_shared_state", {"device": torch.device("cuda", 1)})
    assert pick_device() == "cuda:1"  # rank 1 of a multi-GPU launch, not cuda:0


def test_process_state_honours_accelerate_use_cpu(monkeypatch):
    from eva_plugin.modeling import process_state

    _no_accelerate_state(monkeypatch)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    state = process_state()
    assert state.device.type == "cpu" and state._cpu


def test_every_model_factory_puts_its_model_on_the_contexts_device(models):
    from eva_plugin.options import ModelContext

    context = ModelContext(device="cpu", seed=1)
    for kind, name, path in [("backends", "transformers", models["policy"]),
                             ("reward_models", "sequence_classification", models["reward"]),
                             ("reward_models", "embedding", models["encoder"]),
                             ("reward_models", "pairwise", models["policy"])]:
        options = plugins.parse_options(kind, name, {}, "options")
        built = plugins.build(kind, name, str(path), options=options, context=context)
        assert str(built.device) == "cpu" and built.model.device.type == "cpu", name
        built.close()


def _spy_inputs(model, seen: list):
    """Assert, on every forward, that each tensor argument lies on the model's device."""
    def hook(module, args, kwargs):
        device = next(module.parameters()).device
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor):
                assert value.device == device, (value.device, device)
                seen.append(value.device)

    return model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.fixture
def cpu_launch_on_a_gpu_machine(monkeypatch):
    """``accelerate launch --cpu`` on a machine that reports a GPU: a model or tensor that
    defaulted to CUDA would fail here (this torch has no CUDA)."""
    _no_accelerate_state(monkeypatch)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_every_model_kind_runs_on_the_process_device_with_inputs_on_model_device(models, cpu_launch_on_a_gpu_machine):
    from eva_plugin.rewards.pairwise import PairwisePreferenceReward

    backend = TransformersBackend(str(models["policy"]), batch_size=2)
    rewards = [SequenceClassificationReward(str(models["reward"]), batch_size=2, dtype="bfloat16"),
               EmbeddingSimilarityReward(str(models["encoder"])),
               PairwisePreferenceReward(str(models["policy"]), dtype="bfloat16")]
    for m in [backend, *rewards]:
        assert m.model.device.type == "cpu"
        assert next(m.model.parameters()).dtype is torch.float32  # bf16 falls back on a CPU run
    seen: list = []
    hooks = [_spy_inputs(m.model, seen) for m in [backend, *rewards]]
    try:
        backend.generate(CONVS[:2], 2, SamplingParams(temperature=1.0, max_new_tokens=3, seed=1))
        for rm in rewards:
            rm.score(CONVS[:2], [["a poem", "the sea"], ["x = 4", "x"]])
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(d.type == "cpu" for d in seen)


def test_reward_models_create_their_tensors_on_model_device(models, monkeypatch):
    """Every ``torch.tensor`` a reward module builds (input ids, masks, label indices) names the
    model's device."""
    import sys

    from eva_plugin.rewards import pairwise, sequence_classification
    from eva_plugin.rewards.pairwise import PairwisePreferenceReward

    made: list = []
    real = torch.tensor

    def spy(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("eva_plugin.rewards"):
            made.append((caller, kwargs.get("device")))
        return real(*args, **kwargs)

    rms = [SequenceClassificationReward(str(models["reward"])), PairwisePreferenceReward(str(models["policy"]))]
    monkeypatch.setattr(torch, "tensor", spy)
    for rm in rms:
        rm.score(CONVS[:1], [["a", "b"]])
    assert {c for c, _ in made} == {sequence_classification.__name__, pairwise.__name__}
    assert all(d is not None and torch.device(d) == torch.device("cpu") for _, d in made), made
