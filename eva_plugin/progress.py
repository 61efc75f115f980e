"""Progress bars for the long loops (sampling, scoring, server requests): tqdm on the main process.

``bar(total, desc, unit)`` gives a tqdm bar (items, rate, ETA on stderr, cleared when done: the
one log line per finished stage stays the record), or a silent stand-in with the same
``update`` / ``close`` / context-manager use, when

* ``configure(True)`` was called (``eva_plugin.dpo.run_recipe`` passes the recipe's ``disable_tqdm``),
* ``EVA_DISABLE_PROGRESS`` is set to a true value (``1``, ``true``, ``yes``, ``on``),
* this process is not the main one: accelerate's ``PartialState`` if one was set up, else the
  ``RANK`` / ``LOCAL_RANK`` environment of a launcher.

Work done in parts (a stage's chunks, ``eva_plugin.chunks``) runs inside ``span``: the bars its parts
open show as one bar over the whole work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_disabled = False
_span: _Span | None = None


def configure(disabled: bool | None) -> None:
    """Turn the bars off (``True``) or back on for this process; ``None`` (unset) means on."""
    global _disabled
    _disabled = bool(disabled)


def _is_main_process() -> bool:
    accelerate_state = sys.modules.get("accelerate.state")
    if accelerate_state is not None and getattr(accelerate_state.PartialState, "_shared_state", None):
        return bool(accelerate_state.PartialState().is_main_process)
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in ("RANK", "LOCAL_RANK"))


def enabled() -> bool:
    """Whether ``bar`` shows anything in this process now."""
    if _disabled:
        return False
    if os.environ.get("EVA_DISABLE_PROGRESS", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return _is_main_process()


class _NoBar:
    """The silent stand-in: every call does nothing."""

    disable = True

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "it"):
    """A progress bar over ``total`` items (tqdm on the main process, else a no-op); inside ``span``,
    the span's one bar of that description."""
    if not enabled():
        return _NoBar()
    if _span is not None:
        return _span.bar(total or 0, desc, unit)
    return _tqdm(total, desc, unit)


def _tqdm(total: int | None, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextmanager
def span(items: int) -> Iterator[_Span]:
    """Work on ``items`` items done in parts (a stage's chunks, ``span.part(size)`` before each): the bars
    the parts open show as one bar per description over all of them, its total estimated from the
    parts so far, so the rate and the time left are the whole work's."""
    global _span
    if _span is not None:  # inside another span: that one keeps the bars
        yield _Span(items)
        return
    _span = opened = _Span(items)
    try:
        yield opened
    finally:
        _span = None
        opened.close()


class _Span:
    """The bars of one ``span``: by (description, unit), each with the totals of the parts it counted."""

    def __init__(self, items: int) -> None:
        self.items, self.started, self.size = items, 0, 0  # items of the parts so far and of this part
        self.bars: dict[tuple[str, str], _SpanBar] = {}

    def part(self, size: int) -> None:
        """The next part begins, with ``size`` of the items."""
        self.started += size
        self.size = size
        for held in self.bars.values():
            held.before += held.current
            held.current = 0

    def bar(self, total: int, desc: str, unit: str) -> _SpanBar:
        """The bar of ``desc``/``unit``, its total now: the earlier parts' totals, this part's, and the rest
        of the items at this part's count per item."""
        rest = (self.items - self.started) * total / self.size if self.size else 0
        held = self.bars.get((desc, unit))
        if held is None:
            held = self.bars[(desc, unit)] = _SpanBar(_tqdm(total + round(rest), desc, unit))
        else:
            held.tqdm.total = held.before + total + round(rest)
            held.tqdm.refresh()
        held.current = total
        return held

    def close(self) -> None:
        for held in self.bars.values():
            held.tqdm.close()


class _SpanBar(_NoBar):
    """One part's view of a span's bar: updates go to it; closing (a no-op here) is the span's."""

    disable = False

    def __init__(self, tqdm) -> None:
        self.tqdm, self.before, self.current = tqdm, 0, 0

    def update(self, n: float = 1) -> None:
        self.tqdm.update(n)
