"""An OpenAI-compatible chat-completions server as a generation backend (vLLM, TGI, OpenAI, …).

Requests run with bounded concurrency; each has a timeout and is retried with
exponential backoff on connection errors, timeouts, HTTP 429 and 5xx. A prompt whose
retries run out, or a choice whose ``content`` is null, costs that prompt or choice
only (an empty text, counted in ``Generations.failed``), never the batch. A 401 or 403 is
different: the key is missing or wrong for every request, so the first one stops the call with
``ServerDenied`` (an ``EvaError``: one line with the server's message), never retried.

The API key comes from the environment variable named by ``options.api_key_env`` only (an inline
``options.api_key`` is refused when the recipe is read); its value is registered with
``eva_plugin.secrets`` and masked in every message this backend logs or raises.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from eva_plugin import secrets
from eva_plugin.errors import EvaError
from eva_plugin.generation import BackendBase, Conversation, Generations, SamplingParams
from eva_plugin.generation.options import OpenAIOptions
from eva_plugin.generation.seeding import prompt_seeds
from eva_plugin.options import ModelContext
from eva_plugin.progress import bar

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}
#: Statuses that no retry and no other prompt can fix: the run stops.
DENIED_STATUS = {401, 403}


class ServerError(RuntimeError):
    """A request that failed for good (after retries, or with a 4xx that retrying cannot fix)."""


class ServerDenied(EvaError):
    """The server refused the credentials (HTTP 401/403): every request would fail the same way."""


def _one_line(text: str, limit: int = 200) -> str:
    return secrets.redact_text(" ".join(str(text).split()))[:limit]


class OpenAICompatibleBackend(BackendBase):
    """``model_path`` is the model name the server knows (``options.model`` overrides it)."""

    Options = OpenAIOptions

    @classmethod
    def from_options(cls, model_path: str, options: OpenAIOptions, context: ModelContext) -> OpenAICompatibleBackend:
        """The registered factory: a remote server needs no device, dtype or loading keywords."""
        return cls(model_path, **options.as_dict())

    def __init__(
        self,
        model_path: str,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
    ) -> None:
        if not base_url:
            raise ValueError("the openai backend needs options.base_url (e.g. http://localhost:8000/v1)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model or str(model_path)
        self.headers = {"Content-Type": "application/json"}
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env)
        if key:
            secrets.register(key)
            self.headers["Authorization"] = f"Bearer {key}"
        self.denied = threading.Event()  # set by the first 401/403: the other requests stop
        self.denial = ""  # that refusal's message, raised by every request after it
        self.concurrency = max(1, int(concurrency))
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.session = requests.Session()

    def _post(self, payload: dict) -> dict:
        for attempt in range(self.max_retries + 1):
            if self.denied.is_set():
                raise ServerDenied(self.denial)
            try:
                reply = self.session.post(self.url, json=payload, headers=self.headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as err:
                problem = f"{type(err).__name__}"
            else:
                if reply.status_code == 200:
                    return reply.json()
                problem = f"HTTP {reply.status_code}"
                if reply.status_code in DENIED_STATUS:
                    message = (
                        f"the server at {self.url} refused the request ({problem}): {_one_line(reply.text)} "
                        f"(the key comes from ${self.api_key_env}, "
                        f"{'set' if 'Authorization' in self.headers else 'not set'}; options.api_key_env names it)")
                    if not self.denied.is_set():
                        self.denial = message
                        self.denied.set()
                    raise ServerDenied(message)
                if reply.status_code < 500 and reply.status_code not in RETRY_STATUS:
                    raise ServerError(f"{problem}: {_one_line(reply.text)}")
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2**attempt)
        raise ServerError(f"{problem} after {self.max_retries + 1} attempts")

    def _one(self, conversation: Conversation, n: int, params: SamplingParams, index: int, seed: int):
        """Up to ``n`` completions for one prompt: (texts, finished, tokens, failed choices).

        A server that returns fewer than ``n`` choices is asked again for the rest, with the
        seed moved on by the number already received (so a seeded server does not repeat itself)."""
        texts: list[str] = []
        finished: list[bool] = []
        tokens = failed = 0
        while len(texts) < n:
            payload = {"model": self.model, "messages": conversation, "n": n - len(texts),
                       "temperature": params.temperature, "top_p": params.top_p,
                       "max_tokens": params.max_new_tokens, "seed": seed + len(texts)}
            try:
                body = self._post(payload)
            except ServerError as err:
                logger.warning("prompt %d: %s; it counts as failed", index, err)
                missing = n - len(texts)
                return texts + [""] * missing, finished + [True] * missing, tokens, failed + missing
            choices = body.get("choices") or []
            tokens += int((body.get("usage") or {}).get("completion_tokens") or 0)
            if not choices:
                missing = n - len(texts)
                return texts + [""] * missing, finished + [True] * missing, tokens, failed + missing
            for choice in choices[: n - len(texts)]:
                content = (choice.get("message") or {}).get("content")
                failed += content is None
                texts.append((content or "").strip())
                finished.append(choice.get("finish_reason") != "length")
        return texts, finished, tokens, failed

    def generate(
        self, conversations: list[Conversation], n: int, params: SamplingParams, seeds: list[int] | None = None
    ) -> Generations:
        """``n`` completions per conversation; ``seeds`` go out as each request's ``seed``."""
        seeds = seeds if seeds is not None else prompt_seeds(params.seed, conversations)
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        progress = bar(len(conversations), "requests", "request")

        def one(i: int):
            result = self._one(conversations[i], n, params, i, seeds[i])
            progress.update(1)
            return result

        try:
            results = list(pool.map(one, range(len(conversations))))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            progress.close()
        return Generations(
            texts=[r[0] for r in results],
            num_tokens=sum(r[2] for r in results),
            finished=[r[1] for r in results],
            failed=sum(r[3] for r in results),
        )

    def close(self) -> None:
        self.session.close()
