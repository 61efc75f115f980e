"""The errors a user sees: each one reaches the terminal as one line that names the fix.

``eva`` and ``python -m eva_plugin.dpo`` catch ``EvaError`` and print ``eva: error: <message>``
(exit 2), never a traceback. Raise one of these for anything the user can change (a recipe
value, a file, a stale artifact); let programming errors raise as they are.
"""

from __future__ import annotations


class EvaError(Exception):
    """Base of every user-facing error; the message is one line and says what to change."""


class RecipeError(EvaError, ValueError):
    """A recipe value (or command-line override) that cannot work."""


class UnknownPluginError(RecipeError):
    """A recipe named a proxy, selector, evolver, reward model or backend that nothing registers."""


class StaleArtifactError(EvaError, RuntimeError):
    """A finished stage was made with a different configuration than the current recipe."""


class TrainingError(EvaError, RuntimeError):
    """A training round that cannot give a usable policy (no optimiser step, weights not finite): the
    policy is not published, the stages before it are kept."""


class WaitTimedOut(EvaError, RuntimeError):
    """This process waited the run's whole timeout for the others at a shared step (``eva.collective_timeout``).
    Only this process knows it, so every process prints it, not only the main one."""


class StopAfterStage(Exception):
    """Not an error: ``--stop_after`` ends a run right after the named stage finished."""


#: The longest error line printed (a message that quotes a huge value is cut, never a flood).
MAX_LINE = 1000


def one_line(message: object, limit: int = MAX_LINE) -> str:
    """``message`` as the one line the terminal gets: line breaks become spaces, cut at ``limit`` characters."""
    text = " ".join(str(message).splitlines())
    return text if len(text) <= limit else text[:limit - 1] + "…"
