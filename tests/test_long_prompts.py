"""Over-long prompts never crash: the policy drops them with a count, the reward models truncate."""

from __future__ import annotations

import logging

import pytest

from eva_plugin.generation import SamplingParams
from eva_plugin.testing import _save_random, make_tiny_policy

CONTEXT = 64
LONG = "tell me everything about the sea and the moon " * 60  # far over 64 tokens
SHORT = "hi"


@pytest.fixture(scope="module")
def short_models(tmp_path_factory):
    from transformers import LlamaForSequenceClassification, LlamaModel

    root = tmp_path_factory.mktemp("short_models")
    policy = make_tiny_policy(root / "policy", max_position_embeddings=CONTEXT)
    model, _, reward = _save_random(LlamaForSequenceClassification, root / "reward", 1, num_labels=1,
                                    max_position_embeddings=CONTEXT)
    model.save_pretrained(reward)
    model, _, encoder = _save_random(LlamaModel, root / "encoder", 2, max_position_embeddings=CONTEXT)
    model.save_pretrained(encoder)
    return {"policy": str(policy), "reward": str(reward), "encoder": str(encoder)}


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_the_transformers_backend_drops_prompts_over_the_context(short_models, caplog):
    from eva_plugin.generation.transformers_backend import TransformersBackend

    backend = TransformersBackend(short_models["policy"], device="cpu")
    assert backend.context == CONTEXT
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1)
    with caplog.at_level(logging.WARNING, logger="eva_plugin.generation.transformers_backend"):
        gens = backend.generate([conv(SHORT), conv(LONG), conv(SHORT + " there")], 2, params)
    assert gens.texts[1] == ["", ""] and gens.dropped_too_long == 1 and gens.failed == 2
    assert len(gens.texts[0]) == 2 and len(gens.texts[2]) == 2 and len(gens.finished[0]) == 2
    assert "1 of 3 prompts" in caplog.text
    again = backend.generate([conv(SHORT), conv(SHORT + " there")], 2, params)  # the others are unaffected
    assert again.texts == [gens.texts[0], gens.texts[2]] and again.dropped_too_long == 0
    backend.close()


def test_a_prompt_that_fits_only_without_the_new_tokens_is_dropped(short_models):
    from eva_plugin.generation.transformers_backend import TransformersBackend

    backend = TransformersBackend(short_models["policy"], device="cpu")
    gens = backend.generate([conv(SHORT)], 1, SamplingParams(max_new_tokens=CONTEXT, temperature=0))
    assert gens.texts == [[""]] and gens.dropped_too_long == 1
    backend.close()


def test_sequence_classification_truncates_to_the_model_context(short_models):
    from eva_plugin.rewards.sequence_classification import SequenceClassificationReward

    rm = SequenceClassificationReward(short_models["reward"], device="cpu")
    assert rm.max_length == CONTEXT
    scores = rm.score([conv(LONG), conv(SHORT)], [[LONG, "ok"], ["fine"]])
    assert [len(s) for s in scores] == [2, 1]
    rm.close()


def test_pairwise_keeps_the_end_of_an_over_long_comparison(short_models, caplog):
    from eva_plugin.rewards.pairwise import PairwisePreferenceReward

    judge = PairwisePreferenceReward(short_models["policy"], device="cpu")
    assert judge.max_length == CONTEXT
    with caplog.at_level(logging.WARNING, logger="eva_plugin.rewards.pairwise"):
        scores = judge.score([conv(LONG)], [[LONG, "short answer"]])
    assert len(scores[0]) == 2 and "their start is cut" in caplog.text
    judge.close()


def test_embedding_reward_caps_max_length_at_the_context(short_models):
    from eva_plugin.rewards.embedding import EmbeddingSimilarityReward

    rm = EmbeddingSimilarityReward(short_models["encoder"], device="cpu", max_length=4096)
    assert rm.max_length == CONTEXT
    assert len(rm.score([conv(LONG)], [[LONG + " fine words here"]])[0]) == 1
    rm.close()
