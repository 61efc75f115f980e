"""A local model folder read as files, before anything loads it (issue 20, class 5).

Each check reads a few bytes (``config.json``, a safetensors header, the tokenizer's JSON) and
returns what is wrong as one sentence ("" when nothing is), so that ``checks.check_model_paths``
refuses a folder whose weights or tokenizer are missing or broken, a policy without a chat
template, custom code without ``trust_remote_code`` and a causal LM given as a sequence-classification
reward model, before the first model is loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

#: Files that hold (or index) a checkpoint's weights.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth",
                   "*.h5", "*.msgpack", "*.gguf")
#: Files a tokenizer is built from (fast, SentencePiece, BPE/WordPiece vocabularies, tiktoken).
TOKENIZER_PATTERNS = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken", "tiktoken.*")
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER = 100_000_000
#: config.json keys that hold a model's context length, most specific first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def read_json(path: Path) -> Any:
    """The JSON value of ``path``; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def model_config(folder: Path) -> dict:
    """``config.json`` as a mapping ({} when it is not one)."""
    config = read_json(folder / "config.json")
    return config if isinstance(config, dict) else {}


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def safetensors_fault(path: Path) -> str:
    """What is wrong with a safetensors file's header (8-byte little-endian length, then that many
    bytes of JSON object), read without the tensors; "" when it is sound."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes, too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            return f"{path.name} has a broken safetensors header (it claims {length} bytes; the file has {size})"
        try:
            header = json.loads(fh.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return f"{path.name} has a broken safetensors header (not JSON)"
    if not isinstance(header, dict):
        return f"{path.name} has a broken safetensors header (not a JSON object)"
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + length + max(ends) > size:
        return f"{path.name} is truncated ({size} bytes; its header needs {8 + length + max(ends)})"
    return ""


def weights_fault(folder: Path) -> str:
    """No weight file at all, or a safetensors file whose header is broken; "" when they look whole."""
    found = _matching(folder, WEIGHT_PATTERNS)
    if not found:
        return f"{folder} holds no weights (no *.safetensors or *.bin)"
    for path in found:
        if path.suffix == ".safetensors" and (fault := safetensors_fault(path)):
            return fault
    return ""


def tokenizer_fault(folder: Path) -> str:
    """No tokenizer file, or a ``tokenizer.json`` / ``tokenizer_config.json`` that is not JSON; "" when sound."""
    config = folder / "tokenizer_config.json"
    if config.is_file() and not isinstance(read_json(config), dict):
        return f"{config.name} is not a JSON object"
    if (folder / "tokenizer.json").is_file() and not isinstance(read_json(folder / "tokenizer.json"), dict):
        return "tokenizer.json is not valid JSON"
    own_code = isinstance(read_json(config), dict) and "auto_map" in read_json(config)
    if not _matching(folder, TOKENIZER_PATTERNS) and not own_code:
        return f"{folder} holds no tokenizer (no tokenizer.json, tokenizer.model or vocab file)"
    return ""


def has_chat_template(folder: Path) -> bool:
    """Whether the folder's tokenizer has a chat template (``chat_template.jinja``/``.json``, a
    ``chat_templates/`` folder, or ``chat_template`` in ``tokenizer_config.json``)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    if (folder / "chat_templates").is_dir() and any((folder / "chat_templates").glob("*.jinja")):
        return True
    config = read_json(folder / "tokenizer_config.json")
    return isinstance(config, dict) and bool(config.get("chat_template"))


def custom_code(folder: Path) -> str:
    """The file whose ``auto_map`` names code shipped with the model (config or tokenizer), or ""."""
    for name in ("config.json", "tokenizer_config.json"):
        value = read_json(folder / name)
        if isinstance(value, dict) and value.get("auto_map"):
            return name
    return ""


def causal_lm_only(folder: Path) -> str:
    """The architecture when ``config.json`` names only causal-LM heads (``*ForCausalLM``,
    ``*LMHeadModel``): no sequence-classification head to score with; else ""."""
    names = [str(a) for a in model_config(folder).get("architectures") or []]
    lm = [a for a in names if a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))]
    return lm[0] if names and len(lm) == len(names) else ""


def config_folder(model: str | Path | None) -> Path | None:
    """The folder holding a model's ``config.json``: a local folder, or a hub id's snapshot in the cache
    (None when neither has one)."""
    if not model:
        return None
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return folder
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
    except Exception:  # not a valid repo id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def context_length(model: str | Path | None) -> int | None:
    """A model's context in tokens from its ``config.json`` (its ``text_config`` for multimodal models),
    read without loading it; None when there is no config or it names no length."""
    folder = config_folder(model)
    config = model_config(folder) if folder is not None else {}
    for block in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = block.get(key) if isinstance(block, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def prompt_token_counts(folder: Path, prompts: list[str]) -> list[int] | None:
    """Tokens of each prompt under the folder's fast tokenizer (``tokenizer.json`` read by ``tokenizers``,
    no model and no transformers tokenizer class); None without one."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer.json the transformers loader may still read (or refuse later)
        return None
    return [len(e.ids) for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
