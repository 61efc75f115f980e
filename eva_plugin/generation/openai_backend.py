"""An OpenAI-compatible chat-completions server as a generation backend (vLLM, TGI, OpenAI, …).

Only the main process of a launch sends (``remote``: ``sharding.Shards.from_main``), through at most
``concurrency`` requests in flight and, when ``requests_per_minute`` is set, no faster than that: both
limits are the run's, whatever the number of processes. Each request has a timeout and is retried on
connection errors, timeouts, HTTP 408/409/429 and 5xx: after the server's ``Retry-After`` (or
``retry-after-ms``) when it sends one, which then holds every request back, else after an exponential
backoff; both with jitter, both capped at ``max_wait``. A prompt whose retries run out, or a choice whose
``content`` is null, costs that prompt or choice only (an empty text, counted in ``Generations.failed``),
never the batch. A 401 or 403 is different: the key is missing or wrong for every request, so the first one
stops the call with ``ServerDenied`` (an ``EvaError``: one line with the server's message), never retried.

With a cache (``use_cache``: the stage's ``iter_<t>/.<stage>.requests/``) every answer is written to disk
before it is used and a request already answered there is not sent again (``request_cache``). Usage is
counted per call (``Generations.usage``): requests, those replayed from the cache, retries, failures, prompt
and completion tokens, and the cost when ``prompt_price_per_1k`` / ``completion_price_per_1k`` are set.

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
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from eva_plugin import secrets
from eva_plugin.errors import EvaError
from eva_plugin.generation import USAGE_KEYS, BackendBase, Conversation, Generations, SamplingParams
from eva_plugin.generation.options import OpenAIOptions
from eva_plugin.generation.pacing import Pacer, backoff_delay, retry_after, server_delay
from eva_plugin.generation.request_cache import RequestCache, request_key
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


class Tally:
    """The usage counters of one ``generate`` call (shared by its worker threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(USAGE_KEYS, 0)
        self.last_error = ""

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                self.counts[key] += value

    def failed(self, error: str) -> None:
        with self.lock:
            self.counts["requests_failed"] += 1
            self.last_error = error


def answered(body: dict) -> bool:
    """A reply worth keeping: it has choices and every one has text (a null content is asked again)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and isinstance((c.get("message") or {}).get("content"), str) for c in choices)


class OpenAICompatibleBackend(BackendBase):
    """``model_path`` is the model name the server knows (``options.model`` overrides it)."""

    Options = OpenAIOptions
    remote = True

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
        requests_per_minute: float | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        prompt_price_per_1k: float | None = None,
        completion_price_per_1k: float | None = None,
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
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_wait = float(backoff), float(max_wait)
        self.prices = (prompt_price_per_1k, completion_price_per_1k)
        self.pacer = Pacer(requests_per_minute)
        self.cache: RequestCache | None = None
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency)  # one connection per worker
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def use_cache(self, folder: Path | None) -> None:
        """Keep answers in ``folder`` and replay those already there (None: stop; the file is closed)."""
        if self.cache is not None:
            self.cache.close()
        self.cache = RequestCache(folder) if folder is not None else None

    def _wait(self, seconds: float) -> None:
        self.denied.wait(seconds)  # a refusal elsewhere ends the wait: the next attempt raises it

    def _post(self, payload: dict, tally: Tally) -> dict:
        """The server's answer to ``payload``: from the cache when it was answered before, else sent (and
        retried) and, when it has text, written to the cache before it is returned."""
        key = request_key(self.url, payload) if self.cache is not None else ""
        if key and (body := self.cache.get(key)) is not None:
            tally.add(requests=1, requests_cached=1)
            return body
        tally.add(requests=1)
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                tally.add(retries=1)
            self.pacer.wait_turn(self.denied)
            if self.denied.is_set():
                raise ServerDenied(self.denial)
            hint = None
            try:
                reply = self.session.post(self.url, json=payload, headers=self.headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as err:
                problem = f"{type(err).__name__}"
            else:
                if reply.status_code == 200:
                    try:
                        body = reply.json()
                    except ValueError:
                        body = None
                    if isinstance(body, dict):
                        if key and answered(body):
                            self.cache.put(key, body)
                        return body
                    problem = "HTTP 200 without a JSON object"
                else:
                    problem = f"HTTP {reply.status_code}: {_one_line(reply.text, 120)}"
                    if reply.status_code in DENIED_STATUS:
                        self._deny(reply, f"HTTP {reply.status_code}")
                    if reply.status_code < 500 and reply.status_code not in RETRY_STATUS:
                        raise ServerError(problem)
                    hint = retry_after(reply.headers)
            if attempt < self.max_retries:
                if hint is not None:  # the server said when: every request waits until then
                    self.pacer.pause_until(time.monotonic() + server_delay(hint, self.backoff, self.max_wait))
                else:
                    self._wait(backoff_delay(attempt, self.backoff, self.max_wait))
        raise ServerError(f"{problem} (after {self.max_retries + 1} attempts)")

    def _deny(self, reply, problem: str) -> None:
        message = (f"the server at {self.url} refused the request ({problem}): {_one_line(reply.text)} "
                   f"(the key comes from ${self.api_key_env}, "
                   f"{'set' if 'Authorization' in self.headers else 'not set'}; options.api_key_env names it)")
        if not self.denied.is_set():
            self.denial = message
            self.denied.set()
        raise ServerDenied(message)

    def _one(self, conversation: Conversation, n: int, params: SamplingParams, index: int, seed: int,
             tally: Tally):
        """Up to ``n`` completions for one prompt: (texts, finished, completion tokens, failed choices).

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
                body = self._post(payload, tally)
            except ServerError as err:
                logger.warning("prompt %d: %s; it counts as failed", index, err)
                tally.failed(str(err))
                missing = n - len(texts)
                return texts + [""] * missing, finished + [True] * missing, tokens, failed + missing
            choices = body.get("choices") or []
            usage = body.get("usage") or {}
            completion = _count(usage.get("completion_tokens"))
            tokens += completion
            tally.add(prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=completion)
            if not choices:
                tally.failed("HTTP 200 without choices")
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
        tally = Tally()

        def one(i: int):
            result = self._one(conversations[i], n, params, i, seeds[i], tally)
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
            usage=self._usage(tally.counts),
            last_error=tally.last_error,
        )

    def _usage(self, counts: dict[str, int]) -> dict[str, float]:
        """The counters, with ``cost`` (prompt and completion tokens at their price per 1 K) when priced."""
        usage: dict[str, float] = dict(counts)
        prompt_price, completion_price = self.prices
        if prompt_price is not None or completion_price is not None:
            usage["cost"] = (counts["prompt_tokens"] * (prompt_price or 0.0)
                             + counts["completion_tokens"] * (completion_price or 0.0)) / 1000
        return usage

    def close(self) -> None:
        self.use_cache(None)
        self.session.close()


def _count(value) -> int:
    """A token count from a server's ``usage`` (missing or malformed: 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
