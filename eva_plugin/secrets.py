"""Keep secrets out of manifests and logs.

``redact(obj)`` returns a copy of a config (dicts, lists, dataclass dicts) in which every value
under a secret-looking key (``api_key``, ``token``, ``password``, ``secret``, ``authorization``,
``*_token``, ``*_key``, …) becomes ``"<redacted:XXXXXXXX>"``, the first 8 hex digits of the
value's sha256 (so a stage's fingerprint still changes when the secret does, while the secret
itself is never written), and every string that contains a registered secret value has it
replaced the same way. ``redact_text`` does the latter for log lines and error messages.
Backends that read a secret (the openai backend's ``api_key_env``) ``register`` its value.
``RedactingFilter`` is a ``logging.Filter`` that redacts registered values from log records.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Any

#: Key names (case-insensitive) whose values are secrets; ``*_env`` keys name a variable, not a value.
#: Tokenizer special tokens (``pad_token``, ``eos_token``, …) are not secrets.
SECRET_KEY = re.compile(
    r"^(?!(pad|eos|bos|unk|sep|cls|mask|start|end|stop|image|audio|video)_token$)"
    r"(.*_)?(api_?key|access_?key|private_?key|secret_?key|token|password|passwd|secret|authorization|credentials?)$",
    re.IGNORECASE)

_lock = threading.Lock()
_values: set[str] = set()
#: Shorter registered values are not replaced inside text (they would match by chance).
MIN_LENGTH = 6


def is_secret_key(key: object) -> bool:
    """Whether a config key names a secret value (``api_key``, ``hf_token``; not ``api_key_env``)."""
    return isinstance(key, str) and bool(SECRET_KEY.search(key))


def mask(value: object) -> str:
    """``"<redacted:XXXXXXXX>"``: the first 8 hex digits of the value's sha256."""
    return f"<redacted:{hashlib.sha256(str(value).encode()).hexdigest()[:8]}>"


def register(value: str | None) -> None:
    """Remember a secret value so that ``redact_text`` / ``redact`` hide it wherever it appears."""
    if value and len(value) >= MIN_LENGTH:
        with _lock:
            _values.add(value)


def redact_text(text: str) -> str:
    """``text`` with every registered secret value (and ``Bearer <token>``) masked."""
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, mask(value))
    return re.sub(r"(Bearer\s+)(?!<redacted)([A-Za-z0-9._~+/=-]{6,})", lambda m: m.group(1) + mask(m.group(2)), text)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with secret-keyed values masked and registered secret values hidden."""
    if isinstance(obj, dict):
        return {k: (mask(v) if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def secret_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-keyed, non-empty values in a nested dict (for refusing inline keys)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(k) and v not in (None, ""):
                found.append(path)
            else:
                found.extend(secret_keys(v, path))
    return found


class RedactingFilter(logging.Filter):
    """Masks registered secret values in a record's message (attach to a handler or logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
