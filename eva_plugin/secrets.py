"""Keep secrets out of manifests and logs.

``redact(obj)`` returns a copy of a config (dicts, lists, dataclass dicts) in which every value
under a secret-looking key (``is_secret_key``: ``api_key``, ``api-key``, ``X-API-Key``, ``apiKey``,
``hf_token``, ``password``, ``client_secret``, ``auth``, ``credentials``, … in any case and with any
separator) becomes ``"<redacted:XXXXXXXX>"``, the first 8 hex digits of the value's sha256 (so a
stage's fingerprint still changes when the secret does, while the secret itself is never written;
a value shorter than ``MIN_LENGTH`` becomes ``"<redacted>"``: its hash would give it away), the
user-info of every URL (``http://user:key@host``) is masked the same way, and every string that
contains a registered secret value has it replaced. ``redact_text`` does the latter two for log
lines and error messages. Backends that read a secret (the openai backend's ``api_key_env``)
``register`` its value. ``RedactingFilter`` is a ``logging.Filter`` that redacts registered values
from log records.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Any

#: A key whose last word is one of these names a secret value (``api_key``, ``X-API-Key``, ``hf_token``).
SECRET_WORDS = frozenset({"key", "apikey", "accesskey", "privatekey", "secretkey", "token", "authtoken",
                          "accesstoken", "apitoken", "password", "passwd", "passphrase", "secret", "auth",
                          "authorization", "credential", "credentials", "cookie"})
#: These name a secret wherever they stand (``auth_header``, ``password_value``) ...
ALWAYS_SECRET = frozenset({"password", "passwd", "passphrase", "secret", "auth", "authorization", "credential",
                           "credentials", "apikey"})
#: ... unless the last word says the value only points at one (``api_key_env``, ``token_path``, ``secret_name``).
POINTERS = frozenset({"env", "var", "variable", "file", "path", "dir", "name", "type", "id", "url", "endpoint",
                      "method", "scheme", "mode"})
#: Tokenizer special tokens (``pad_token``, ``eos_token``, …) are not secrets.
SPECIAL_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end", "stop", "image",
                            "audio", "video"})
#: ``scheme://user:password@`` (the user-info of a URL).
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#@\s]+)@")

_lock = threading.Lock()
_values: set[str] = set()
#: Shorter values are masked without a hash, and replaced in text only where they stand alone (as a word).
MIN_LENGTH = 6


def key_words(key: str) -> list[str]:
    """The lower-case words of a key: split at every separator and at camelCase humps (``X-API-Key``,
    ``apiKey`` → ``[…, "api", "key"]``)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", key))
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def is_secret_key(key: object) -> bool:
    """Whether a config key names a secret value (``api_key``, ``api-key``, ``X-API-Key``, ``hf_token``,
    ``client_secret``, ``auth_header``; not ``api_key_env``, ``pad_token``, ``max_new_tokens``, ``key_column``)."""
    if not isinstance(key, str):
        return False
    words = key_words(key)
    if not words or words[-1] in POINTERS:
        return False
    if words[-1] == "token" and len(words) > 1 and words[-2] in SPECIAL_TOKENS:
        return False
    return words[-1] in SECRET_WORDS or any(w in ALWAYS_SECRET for w in words)


def mask(value: object) -> str:
    """``"<redacted:XXXXXXXX>"``: the first 8 hex digits of the value's sha256; ``"<redacted>"`` for a value
    shorter than ``MIN_LENGTH`` (few enough candidates that its hash would reveal it)."""
    text = str(value)
    if len(text) < MIN_LENGTH:
        return "<redacted>"
    return f"<redacted:{hashlib.sha256(text.encode()).hexdigest()[:8]}>"


def register(value: str | None) -> None:
    """Remember a secret value so that ``redact_text`` / ``redact`` hide it wherever it appears."""
    if value:
        with _lock:
            _values.add(value)


def redact_text(text: str) -> str:
    """``text`` with every registered secret value, URL user-info and ``Bearer <token>`` masked (a registered
    value shorter than ``MIN_LENGTH`` only where it stands alone, so that it does not mask words by chance)."""
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value not in text:
            continue
        if len(value) >= MIN_LENGTH:
            text = text.replace(value, mask(value))
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", mask(value), text)
    text = URL_USERINFO.sub(lambda m: m.group(1) + (m.group(2) if m.group(2).startswith("<redacted")
                                                      else mask(m.group(2))) + "@", text)
    return re.sub(r"(Bearer\s+)(?!<redacted)([A-Za-z0-9._~+/=-]+)", lambda m: m.group(1) + mask(m.group(2)), text)


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
