"""Loading local models and tokenizers (never from a hub when ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def torch_dtype(name: str | None):
    """``"bfloat16"`` → ``torch.bfloat16``; ``None``/``"auto"`` pass through; bf16 falls back on CPU."""
    if name in (None, "auto"):
        return name
    dtype = getattr(torch, name) if isinstance(name, str) else name
    if dtype in (torch.bfloat16, torch.float16) and not torch.cuda.is_available():
        return torch.float32
    return dtype


def pick_device(device: str | None) -> str:
    """``device`` if given, else CUDA when available, else CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )


def release() -> None:
    """Give memory back after dropping a model (call once the last reference is gone)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def whole_weights() -> Iterator[None]:
    """Load models for sampling and scoring with all their weights on this process.

    When the recipe trains with DeepSpeed ZeRO-3, transformers partitions every model loaded
    afterwards across the processes (``zero.Init``); a generation or reward model has no
    DeepSpeed engine to gather those shards, and each process works on its own prompts.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
