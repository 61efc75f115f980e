"""Experiment trackers (the recipe's ``report_to``): one tracker run per EVA run, one step axis.

Every round trains a fresh TRL trainer whose ``global_step`` restarts at 0. ``Tracker`` hands every
round's trainer the same integration callbacks (built once, on the main process, by
``transformers.integrations.get_reporting_integration_callbacks``), one ``run_name`` and one
TensorBoard folder (``<output_dir>/runs/<run_name>`` unless ``TENSORBOARD_LOGGING_DIR`` is set), and a
step offset: the steps the earlier rounds trained, read from their ``policy`` manifests, so a resumed
run gets the same offsets. ``log_iteration`` sends an iteration's ``eva/*`` numbers
(``report.iteration_metrics``, read from the manifests) to the same callbacks at the step that
ended its training. ``report_to: none`` builds nothing and imports nothing.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eva_plugin.report import iteration_metrics, read_manifests


class ContinuedSteps:
    """Trainer mixin: what ``log`` records (the log history and every callback) is stamped
    ``global_step + step_offset``; the steps trained, and ``max_steps``, are left alone."""

    step_offset: int = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.state.global_step += self.step_offset
        try:
            super().log(logs, start_time)  # type: ignore[misc]
        finally:
            self.state.global_step -= self.step_offset


def continued(trainer_class: type) -> type:
    """``trainer_class`` with ``ContinuedSteps`` in front (same name)."""
    return type(trainer_class.__name__, (ContinuedSteps, trainer_class), {})


def reporters(report_to: Any) -> list[str]:
    """The integrations ``report_to`` names, resolved as ``TrainingArguments.__post_init__`` does
    (``"all"``: every installed one; ``"none"`` or nothing: none)."""
    if report_to is None or report_to in ("none", ["none"]):
        return []
    if report_to in ("all", ["all"]):
        from transformers.integrations import get_available_reporting_integrations

        return list(get_available_reporting_integrations())
    return [report_to] if isinstance(report_to, str) else list(report_to)


def steps_through(manifests: dict[int, dict[str, dict]], t: int) -> int:
    """The optimiser steps of rounds 1..t, from their ``policy`` manifests."""
    return sum(int(manifests.get(s, {}).get("policy", {}).get("steps") or 0) for s in range(1, t + 1))


@contextlib.contextmanager
def _eva_keys_kept() -> Iterator[None]:
    """transformers' callbacks prefix every key that is not ``eval_``/``test_`` with ``train/``
    (``integration_utils.rewrite_logs``); while this is open, ``eva/…`` keys pass unchanged."""
    from transformers.integrations import integration_utils

    original = integration_utils.rewrite_logs

    def rewrite(logs: dict) -> dict:
        ours = {k: v for k, v in logs.items() if k.startswith("eva/")}
        return {**original({k: v for k, v in logs.items() if k not in ours}), **ours}

    integration_utils.rewrite_logs = rewrite
    try:
        yield
    finally:
        integration_utils.rewrite_logs = original


class Tracker:
    """The run's tracker callbacks (main process only; empty elsewhere and with ``report_to: none``)."""

    def __init__(self, training: Any, root: Path, is_main: bool) -> None:
        self.root = Path(root)
        self.run_name: str = training.run_name or self.root.name
        names = reporters(training.report_to) if is_main else []
        self.callbacks: list[Any] = []
        if not names:
            return
        from transformers.integrations import TensorBoardCallback, get_reporting_integration_callbacks

        self.args = copy.deepcopy(training)
        self.args.run_name = self.run_name
        self.callbacks = [make() for make in get_reporting_integration_callbacks(names)]
        for callback in self.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = str(self.root / "runs" / self.run_name)

    def attach(self, trainer: Any, t: int) -> None:
        """Round ``t``'s trainer (a ``continued`` class): its log steps follow rounds 1..t-1, and it
        reports through the run's callbacks under the run's name."""
        trainer.step_offset = steps_through(read_manifests(self.root), t - 1)
        if not self.callbacks:
            return
        trainer.args.run_name = self.run_name
        for callback in self.callbacks:
            trainer.remove_callback(type(callback))  # the fresh one the trainer built from report_to
            trainer.add_callback(callback)

    def log_iteration(self, t: int) -> None:
        """Iteration ``t``'s ``eva/*`` numbers at the step that ended its training (0: π_0's eval)."""
        if not self.callbacks:
            return
        manifests = read_manifests(self.root)
        metrics = iteration_metrics(manifests, t)
        if set(metrics) == {"eva/iteration"}:
            return  # nothing published (iteration 0 without a held-out eval)
        self._send("on_log", self.callbacks, steps_through(manifests, t), logs=metrics)

    def close(self) -> None:
        """End of the run: close what the last ``eva/*`` log reopened after training ended
        (TensorBoard's writer, the trackio run); wandb's run is left open, as transformers leaves it."""
        if self.callbacks:
            from transformers.integrations import TensorBoardCallback, TrackioCallback

            self._send("on_train_end",
                       [c for c in self.callbacks if isinstance(c, (TensorBoardCallback, TrackioCallback))])

    def _send(self, event: str, callbacks: list[Any], step: int = 0, **kwargs: Any) -> None:
        """Call ``event`` on ``callbacks`` as a trainer at ``step`` would."""
        from transformers import TrainerControl, TrainerState

        state, control = TrainerState(global_step=step), TrainerControl()
        with _eva_keys_kept():
            for callback in callbacks:
                getattr(callback, event)(self.args, state, control, **kwargs)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
