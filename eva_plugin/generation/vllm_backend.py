"""Offline ``vllm.LLM`` generation (optional extra ``eva-plugin[vllm]``, GPU only).

One engine per process for the whole run. The first factory call builds it with
``enable_sleep_mode=True``; ``close()`` (the loop's end of an iteration's sampling, before
training) puts it to sleep at level 2 (weights discarded, KV cache freed) instead of
destroying it; the next iteration's factory call with the new checkpoint wakes the weights,
reloads them from that path (``collective_rpc("reload_weights", kwargs={"weights_path": …,
"is_checkpoint_format": True})``), wakes the KV cache and resets the prefix cache — TRL's
colocate pattern, with weights read from the saved checkpoint rather than pushed from the
trainer. Engines are kept in a process-level registry keyed by every engine keyword but the
model path; ``shutdown_engines()`` at process end releases them without touching the default
process group (accelerate's). Written against vLLM 0.22–0.31 (the range TRL 1.16 supports):
``LLM.sleep``/``wake_up(tags=…)``, ``collective_rpc``, ``reset_prefix_cache`` and the worker's
``reload_weights(weights_path=…, is_checkpoint_format=…)``.

Prompts go to the engine as token ids of the policy's chat template with no added special
tokens (templates that emit BOS get exactly one); a prompt longer than ``max_model_len - 1``
tokens is dropped before it reaches the engine (empty responses, counted in
``Generations.failed`` and ``Generations.dropped_too_long``). Every ``generation.options`` key
declared in ``VLLMOptions`` (and each key of its ``engine_args``) is forwarded to ``vllm.LLM``;
nothing else is.

Under ``accelerate launch`` with several processes every process builds an engine with
vLLM's ``external_launcher`` executor: each group of ``tensor_parallel_size`` consecutive
ranks is one engine and must be given the same prompts (``ranks_per_engine`` tells the
loop how to split work); the process group stays accelerate's and is not torn down.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from eva_plugin.errors import EvaError
from eva_plugin.generation import BackendBase, Conversation, Generations, SamplingParams, render_prompt
from eva_plugin.generation.options import VLLMOptions
from eva_plugin.generation.seeding import prompt_seeds
from eva_plugin.modeling import load_tokenizer
from eva_plugin.options import ModelContext

logger = logging.getLogger(__name__)


@dataclass
class _Engine:
    """A process's engine: the ``vllm.LLM``, the checkpoint its weights came from, whether it sleeps."""

    llm: object
    path: str
    external: bool
    asleep: bool = False


_ENGINES: dict[str, _Engine] = {}
# engines released under external_launcher: kept referenced so vLLM's finaliser (which, from 0.31,
# destroys the default process group) cannot run before accelerate has torn its group down
_RETIRED: list[object] = []


def _engine_key(kwargs: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "model"))


def _empty_cache() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMBackend(BackendBase):
    """Sampling with an offline ``vllm.LLM`` engine (one per process, kept for the run)."""

    #: the engine reserves ``gpu_memory_utilization`` of the GPU: the loop frees other models first
    exclusive = True
    Options = VLLMOptions

    def __init__(self, model_path: str, options: VLLMOptions | None = None,
                 context: ModelContext | None = None) -> None:
        """``options``: the recipe's ``generation.options``; ``context``: the run's dtype, trust_remote_code
        and loading keywords (``revision``; ``quantization="bitsandbytes"`` for ``load_in_4bit``). vLLM
        picks its own attention backend (``VLLM_ATTENTION_BACKEND`` sets it), schedules its own batches
        (the context's ``batch_size``/``batch_tokens`` do not apply) and places itself (no ``device``)."""
        options = options or VLLMOptions()
        context = context or ModelContext()
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("the vllm backend needs vLLM: pip install 'eva-plugin[vllm]'") from None
        loading = _vllm_loading(context.model_kwargs)
        self.tokenizer = load_tokenizer(str(model_path), trust_remote_code=context.trust_remote_code,
                                        revision=loading.get("revision"))
        kwargs = engine_kwargs(str(model_path), options, context, loading)
        world = _world_size()
        self.external = world > 1
        self.ranks_per_engine = options.tensor_parallel_size if self.external else 1
        if self.external:
            if world % self.ranks_per_engine:
                raise ValueError(f"tensor_parallel_size {options.tensor_parallel_size} does not divide the {world} "
                                 "processes; launch a multiple of it or change generation.options")
            # one engine per rank group, fed by this launch; the same seed on every rank of a group
            kwargs.update(distributed_executor_backend="external_launcher", seed=0)
        key = _engine_key(kwargs)
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _Engine(LLM(**kwargs), str(model_path), self.external)
        else:
            _load(engine, str(model_path))
        self.engine = engine
        self.llm = engine.llm
        self.max_model_len = _max_model_len(self.llm, kwargs.get("max_model_len"))

    @classmethod
    def from_options(cls, model_path: str, options: VLLMOptions, context: ModelContext) -> VLLMBackend:
        """The registered factory."""
        return cls(model_path, options, context)

    def render(self, conversation: Conversation) -> str:
        return render_prompt(self.tokenizer, conversation)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The token ids the engine sees: the chat template's text without added special tokens
        (the template writes its own BOS); plain turns, with no template, get the tokenizer's."""
        text = self.render(conversation)
        return list(self.tokenizer(text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"])

    def generate(
        self, conversations: list[Conversation], n: int, params: SamplingParams, seeds: list[int] | None = None
    ) -> Generations:
        """``n`` samples per conversation, one request each, seeded per prompt (``seeds``)."""
        from vllm import SamplingParams as VLLMSamplingParams

        if self.engine.asleep:  # closed, then asked again: the weights must come back first
            _load(self.engine, self.engine.path)
        seeds = seeds if seeds is not None else prompt_seeds(params.seed, conversations)
        ids = [self.prompt_ids(c) for c in conversations]
        limit = self.max_model_len - 1 if self.max_model_len else None  # room for one generated token
        keep = [i for i, p in enumerate(ids) if limit is None or len(p) <= limit]
        dropped = len(ids) - len(keep)
        if dropped:
            logger.warning("%d of %d prompts are longer than max_model_len - 1 = %d tokens; dropped "
                           "(empty responses, counted as failed)", dropped, len(ids), limit)
        texts = [[""] * n for _ in conversations]
        finished = [[True] * n for _ in conversations]
        tokens = 0
        if keep:
            sampling = [VLLMSamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                                           max_tokens=params.max_new_tokens, seed=seeds[i]) for i in keep]
            outputs = self.llm.generate([{"prompt_token_ids": ids[i]} for i in keep], sampling, use_tqdm=True)
            for i, request in zip(keep, outputs, strict=True):  # vLLM returns results in input order
                texts[i] = [c.text.strip() for c in request.outputs]
                finished[i] = [c.finish_reason != "length" for c in request.outputs]
                tokens += sum(len(c.token_ids) for c in request.outputs)
        return Generations(texts, tokens, finished, failed=dropped * n, dropped_too_long=dropped)

    def close(self) -> None:
        """Put the engine to sleep (level 2: weights discarded, KV cache freed) for the reward
        models and the trainer; the next round's factory call wakes and reloads it."""
        _sleep(self.engine)


def _sleep(engine: _Engine) -> None:
    if not engine.asleep:
        engine.llm.sleep(level=2)
        engine.asleep = True
    _empty_cache()


def _load(engine: _Engine, path: str) -> None:
    """Wake ``engine`` with the weights of ``path``: weights first, reloaded from the checkpoint
    (level-2 sleep discarded them), then the KV cache; the prefix cache of older weights is reset."""
    if not engine.asleep and engine.path == path:
        return
    if engine.asleep:
        _empty_cache()
        engine.llm.wake_up(tags=["weights"])
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
    engine.path = path
    if engine.asleep:
        engine.llm.wake_up(tags=["kv_cache"])
        engine.asleep = False
    engine.llm.reset_prefix_cache()


def shutdown_engines() -> None:
    """Release this process's engines at the end of the run (``eva_plugin.dpo.run_recipe``, before the
    process group goes). vLLM's model-parallel groups are destroyed; the default process group is
    left to its owner. Under ``external_launcher`` the engine stays referenced (asleep) until the
    interpreter exits, so vLLM's finaliser cannot tear down accelerate's group."""
    if not _ENGINES:
        return
    for engine in _ENGINES.values():
        try:
            _sleep(engine)
        except Exception as err:  # noqa: BLE001 - shutting down: free what can be freed
            logger.warning("vLLM engine did not go to sleep at shutdown: %s", err)
    try:
        from vllm.distributed.parallel_state import destroy_model_parallel

        destroy_model_parallel()
    except ImportError:
        pass
    for engine in _ENGINES.values():
        if engine.external:
            _RETIRED.append(engine.llm)
    _ENGINES.clear()
    _empty_cache()


def engine_kwargs(model_path: str, options: VLLMOptions, context: ModelContext, loading: dict) -> dict:
    """The ``vllm.LLM`` keywords: the declared options, ``engine_args`` (each checked against vLLM's
    ``EngineArgs``), the run's dtype and trust_remote_code, the loading keywords, and sleep mode on."""
    declared = {k: v for k, v in options.as_dict().items() if k != "engine_args" and v is not None}
    extra = dict(options.engine_args)
    known = _engine_arg_names()
    unknown = sorted(k for k in extra if known is not None and k not in known)
    if unknown:
        raise EvaError(f"eva generation.options.engine_args: vLLM's EngineArgs has no {', '.join(map(repr, unknown))}")
    clash = sorted(set(extra) & (set(options.as_dict()) | {"model", "enable_sleep_mode"}))
    if clash:
        raise EvaError(f"eva generation.options.engine_args: {', '.join(clash)} are set by generation.options or "
                       "by the backend; set them there, not in engine_args")
    kwargs = {"model": model_path, "trust_remote_code": context.trust_remote_code, **declared, **loading, **extra,
              "enable_sleep_mode": True}
    if context.dtype:
        kwargs["dtype"] = context.dtype
    return kwargs


def _engine_arg_names() -> set[str] | None:
    """The keywords vLLM's ``EngineArgs`` takes (None when this vLLM does not say)."""
    try:
        import dataclasses

        from vllm.engine.arg_utils import EngineArgs

        return {f.name for f in dataclasses.fields(EngineArgs)}
    except (ImportError, TypeError):
        return None


def _max_model_len(llm, configured: int | None) -> int | None:
    """The engine's context length (vLLM derives it from the model when not configured)."""
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except (AttributeError, TypeError, ValueError):
        return int(configured) if configured else None


def _vllm_loading(model_kwargs: dict) -> dict:
    """The ``vllm.LLM`` keywords for the recipe's loading keywords: ``revision`` and
    ``tokenizer_revision``; a bitsandbytes ``quantization_config`` → ``quantization="bitsandbytes"``
    (vLLM quantizes in-flight to 4 bit; 8-bit loading is not offered, so it is refused)."""
    out: dict = {}
    revision = model_kwargs.get("revision")
    if revision:
        out["revision"] = out["tokenizer_revision"] = revision
    quantization = model_kwargs.get("quantization_config")
    if quantization is not None:
        if getattr(quantization, "load_in_8bit", False):
            raise ValueError("the vllm backend cannot load in 8 bit (vLLM's in-flight bitsandbytes is 4-bit); "
                             "use load_in_4bit or the transformers backend")
        out["quantization"] = "bitsandbytes"
    return out


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
