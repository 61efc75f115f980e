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
    from eva_plugin.rewards.batching import length_batches

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


def test_reward_and_backend_plugins_registered():
    assert plugins.get("reward_models", "sequence_classification") is SequenceClassificationReward
    assert plugins.get("reward_models", "embedding") is EmbeddingSimilarityReward
    assert plugins.get("backends", "transformers") is TransformersBackend


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
