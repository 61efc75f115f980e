"""Loading local models and tokenizers (never from a hub when ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def torch_dtype(name: str | None, device: str | None = None):
    """``"bfloat16"`` → ``torch.bfloat16``; ``None``/``"auto"`` pass through; bf16/fp16 fall back to
    float32 when the model runs on CPU (``device``, else this process's device, see ``pick_device``)."""
    if name in (None, "auto"):
        return name
    dtype = getattr(torch, name) if isinstance(name, str) else name
    if dtype in (torch.bfloat16, torch.float16) and torch.device(pick_device(device)).type == "cpu":
        return torch.float32
    return dtype


def use_cpu_requested() -> bool:
    """Whether this process was told to run on CPU (``accelerate launch --cpu`` sets
    ``ACCELERATE_USE_CPU``; so does ``use_cpu`` in an accelerate config)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU")


def process_state(use_cpu: bool = False):
    """This process's accelerate ``PartialState``, created on CPU when ``use_cpu`` or the
    environment asks for it (a bare ``PartialState()`` ignores ``ACCELERATE_USE_CPU`` and picks
    CUDA whenever there is a GPU, unlike the trainer's ``Accelerator``)."""
    from accelerate import PartialState

    return PartialState(cpu=bool(use_cpu) or use_cpu_requested())


def pick_device(device: str | None = None) -> str:
    """The one device rule for every model the loop loads.

    ``device`` if given; else CPU when the process was told to run on CPU (``ACCELERATE_USE_CPU``);
    else the device of this process's accelerate state when one exists (``cuda:<local rank>`` under
    a multi-GPU launch); else CUDA when available, else CPU. Never creates an accelerate state.
    Tensors fed to a model are created on (or moved to) ``model.device``.
    """
    if device is not None:
        return str(device)
    if use_cpu_requested():
        return "cpu"
    from accelerate import PartialState

    state = PartialState._shared_state.get("device")
    if state is not None:
        return str(state)
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_kwargs(model_args, path: str | None = None) -> dict:
    """``from_pretrained`` keywords from the recipe's ``ModelConfig``, as the Handbook passes them:
    ``revision``, ``attn_implementation`` and, with ``load_in_4bit``/``load_in_8bit``, the
    bitsandbytes ``quantization_config`` plus a device map putting the model on this process's GPU.

    ``model_revision`` names a version of the recipe's ``model_name_or_path``; it is kept for that
    checkpoint and for local folders (where it is ignored), left out for another hub model
    (e.g. an ``eva.evolver_model`` hub id), which has revisions of its own.
    """
    from trl import get_quantization_config

    kwargs: dict = {"attn_implementation": model_args.attn_implementation}
    revision = model_args.model_revision
    if revision and revision != "main" and path is not None:
        own = str(path) == str(model_args.model_name_or_path) or Path(str(path)).exists()
        revision = revision if own else None
    kwargs["revision"] = revision
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = kbit_device_map()
    return {k: v for k, v in kwargs.items() if v is not None}


def loading_options(**options) -> dict:
    """The ``from_pretrained`` keywords a reward model's ``eva.reward_options`` set (``revision``,
    ``attn_implementation``), without the unset ones."""
    return {k: v for k, v in options.items() if v is not None}


def kbit_device_map() -> dict | None:
    """The whole quantized model on this process's GPU (the Handbook's ``get_kbit_device_map``)."""
    if not torch.cuda.is_available() or use_cpu_requested():
        return None
    return {"": process_state().local_process_index}


def quantized(kwargs: dict | None) -> bool:
    """Whether these load keywords quantize (the model is placed by its device map, never moved)."""
    return bool(kwargs) and kwargs.get("quantization_config") is not None


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    extra = {"revision": revision} if revision else {}
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def sharded_training() -> bool:
    """Whether the trainer shards the models it is given: DeepSpeed ZeRO-3 (transformers' ``zero.Init``
    partitions a model while it loads) or FSDP (accelerate shards the copy in host memory; ``accelerate
    launch`` and ``TrainingArguments.fsdp`` set ``ACCELERATE_USE_FSDP``)."""
    from accelerate.utils import parse_flag_from_env
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or parse_flag_from_env("ACCELERATE_USE_FSDP")


def direct_placement(device: str | None = None, *, training: bool = False) -> dict:
    """``from_pretrained`` keywords that load a model straight onto its GPU (``device_map={"": index}``)
    instead of reading every weight into host memory and moving it (eight processes of a node would hold
    eight host copies of the model). ``device``: the model's device (default: ``pick_device()``).

    Nothing on CPU; nothing while DeepSpeed ZeRO-3 is on (it partitions the model as it loads and refuses a
    device map; sampling and reward models load inside ``whole_weights()``, where it is off); nothing for a
    model to train (``training``) under FSDP, which shards a host copy."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    target = torch.device(pick_device(device))
    if target.type != "cuda" or is_deepspeed_zero3_enabled() or (training and sharded_training()):
        return {}
    return {"device_map": {"": target.index if target.index is not None else torch.cuda.current_device()}}


def load_scorer(model_cls, path: str, device: str, dtype: str | None = None, **kwargs):
    """A model that scores (a reward model): ``model_cls.from_pretrained(path, **kwargs)`` with all its
    weights on this process (``whole_weights``), straight onto ``device`` where it can
    (``direct_placement``), then on ``device`` in eval mode."""
    with whole_weights():
        model = model_cls.from_pretrained(path, dtype=torch_dtype(dtype, device), **kwargs, **direct_placement(device))
    return model.to(device).eval()


def load_causal_lm(path: str, dtype: str | None = None, trust_remote_code: bool = False,
                   device: str | None = None, training: bool = False, **kwargs):
    """``AutoModelForCausalLM.from_pretrained``; ``kwargs`` are ``model_kwargs(model_args, path)``
    (revision, attention implementation, quantization). ``device`` (default: ``pick_device()``) decides
    whether bf16/fp16 fall back to float32 on CPU, and a model not placed by ``kwargs`` loads straight onto
    it where it can (``direct_placement``; ``training``: the trainer will get it)."""
    from transformers import AutoModelForCausalLM

    if "device_map" not in kwargs:
        kwargs.update(direct_placement(device, training=training))
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype, device), trust_remote_code=trust_remote_code, **kwargs
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
