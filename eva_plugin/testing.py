"""Tiny random models with an offline tokenizer, for tests, benchmarks and dry runs.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained on a few
hundred words in memory, the models are randomly initialised Llama architectures.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = (
    "write a short poem about the sea and explain the rhyme scheme in detail . "
    "solve the equation 2 x + 3 = 11 step by step and check the answer . "
    "give three tips for learning a new language quickly , with examples . "
    "summarise the main idea of a paragraph about climate and energy policy . "
    "write a python function that returns the n-th fibonacci number ; add tests . "
    "why is the sky blue ? answer for a curious child in simple words . "
    "list the pros and cons of remote work for a small software company . "
    "translate the sentence into french and spanish , then compare grammar . "
    "I want you to rewrite the given prompt into a more complex version . "
    "#Rewritten Prompt#: #Created Prompt#: #The Given Prompt#: constraints reasoning steps "
    "0 1 2 3 4 5 6 7 8 9 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ "
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE tokenizer in memory and wrap it as a ChatML fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


def _llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _save_random(model_cls, path: str | Path, seed: int, **config_overrides):
    """Build ``model_cls`` with random weights on the tiny config; save it and the tokenizer."""
    import torch

    path = Path(path)
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = model_cls(_llama_config(tokenizer, **config_overrides))
    tokenizer.save_pretrained(path)
    return model, tokenizer, path


def make_tiny_policy(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Save a random tiny ``LlamaForCausalLM`` plus tokenizer at ``path``; return the path."""
    from transformers import GenerationConfig, LlamaForCausalLM

    model, tokenizer, path = _save_random(LlamaForCausalLM, path, seed, **config_overrides)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    return path


def make_tiny_reward_model(path: str | Path, seed: int = 1) -> Path:
    """Save a random tiny ``LlamaForSequenceClassification`` (one label) plus tokenizer."""
    from transformers import LlamaForSequenceClassification

    model, _, path = _save_random(LlamaForSequenceClassification, path, seed, num_labels=1)
    model.save_pretrained(path)
    return path


def make_tiny_encoder(path: str | Path, seed: int = 2) -> Path:
    """Save a random tiny encoder (``LlamaModel`` body) usable by the embedding reward."""
    from transformers import LlamaModel

    model, _, path = _save_random(LlamaModel, path, seed)
    model.save_pretrained(path)
    return path


def make_tiny_pairrm(path: str | Path, seed: int = 3) -> Path:
    """Save a random tiny PairRM (DeBERTa-v2 encoder + comparison head, the PairRM-hf layout) plus
    the offline tokenizer with PairRM's prefix tokens."""
    import torch
    from transformers import DebertaV2Config

    from eva_plugin.rewards.options import PREFIXES
    from eva_plugin.rewards.pairrm import pair_ranker_class

    path = Path(path)
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [*PREFIXES.values(), "<|candidate|>"]})
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in PREFIXES.items()}
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512, relative_attention=True,
                             position_buckets=64, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                             pad_token_id=tokenizer.pad_token_id, n_tasks=1, drop_out=0.05,
                             initializer_range=0.5,  # the default 0.02 makes every comparison ~1e-8
                             cand_prefix_id=tokenizer.convert_tokens_to_ids("<|candidate|>"), **ids)
    torch.manual_seed(seed)
    model = pair_ranker_class()(config)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path
