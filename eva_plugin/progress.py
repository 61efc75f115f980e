"""Progress bars for the long loops (sampling, scoring, server requests): tqdm on the main process.

``bar(total, desc, unit)`` gives a tqdm bar (items, rate, ETA on stderr, cleared when done: the
one log line per finished stage stays the record), or a silent stand-in with the same
``update`` / ``close`` / context-manager use, when

* ``configure(True)`` was called (``eva_plugin.dpo.run_recipe`` passes the recipe's ``disable_tqdm``),
* ``EVA_DISABLE_PROGRESS`` is set to a true value (``1``, ``true``, ``yes``, ``on``),
* this process is not the main one: accelerate's ``PartialState`` if one was set up, else the
  ``RANK`` / ``LOCAL_RANK`` environment of a launcher.
"""

from __future__ import annotations

import os
import sys

_disabled = False


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
    """A progress bar over ``total`` items (tqdm on the main process, else a no-op)."""
    if not enabled():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
