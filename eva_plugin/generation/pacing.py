"""When a request to a remote server may go out: rate limits, ``Retry-After`` and backoff with jitter.

One ``Pacer`` is shared by every worker thread of a backend (and only the main process sends, see
``sharding.Shards.from_main``), so its limits are global: an optional requests-per-minute spacing and a
pause that a server's ``Retry-After`` puts on every request, not only on the one that was told.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Mapping


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms`` (OpenAI), else ``Retry-After`` as seconds or
    an HTTP date; None when absent or unreadable. A date in the past means no wait (0)."""
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry ``attempt`` (0-based) without a server hint: ``base · 2^attempt`` capped at
    ``cap``, drawn uniformly from its upper half ("equal jitter": clients that failed together spread out)."""
    rng = rng or random
    ceiling = min(cap, base * 2 ** attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def server_delay(hint: float, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait for a server's ``Retry-After`` of ``hint`` seconds: at least the hint (cut to ``cap``), plus a
    jitter of up to a tenth of it and of ``base``, so the waiting requests do not all return at once."""
    rng = rng or random
    hint = min(hint, cap)
    return hint + rng.uniform(0, 0.1 * (hint + base))


class Pacer:
    """Spaces request starts ``60 / requests_per_minute`` seconds apart (None: no spacing) and holds every
    start until a pause that a server asked for (``pause_until``) has passed. Thread-safe."""

    def __init__(self, requests_per_minute: float | None = None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time of the next free start slot
        self._paused_until = 0.0

    def pause_until(self, when: float) -> None:
        """No request starts before monotonic time ``when`` (a later pause already set stays)."""
        with self._lock:
            self._paused_until = max(self._paused_until, when)

    def wait_turn(self, stop: threading.Event | None = None) -> None:
        """Block until this request may start (its slot reserved); returns early when ``stop`` is set."""
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until, self._next if self.interval else now)
                if start <= now:
                    if self.interval:
                        self._next = max(self._next, now) + self.interval
                    return
            wait = start - now
            if stop is not None:
                if stop.wait(wait):
                    return
            else:
                time.sleep(wait)
