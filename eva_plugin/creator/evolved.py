"""What every evolver shares: the evolved-prompt record, its statuses and the feedback preamble.

Both ``evolvers`` (the Evol* chains) and ``self_instruct`` import from here, so neither
imports the other.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType

#: Maps a list of instructions for the evolver LLM to its completions (``None`` for a failed call).
Generate = Callable[[list[str]], list["Completion | None"]]

STATUSES = ("kept", "empty", "truncated", "unusable", "too_short", "too_long", "refusal", "duplicate",
            "near_duplicate")

#: Template words that must not survive into an evolved prompt: the templates' headers (``#Given
#: Prompt#``) and the names of the evolver's own output. A plain "given prompt" is a task's own words
#: ("Explain the given prompt engineering technique"); an echoed instruction is caught by ``ECHO_WORDS``.
_TEMPLATE_WORDS = re.compile(
    r"#\s*(?:the\s+)?(?:given|rewritten|created)\s+prompt\s*#|\b(?:rewritten|created)\s+prompt\b", re.IGNORECASE)


@dataclass(frozen=True)
class Completion:
    """One evolver LLM output; ``truncated``: it hit the token limit before it ended (never kept)."""

    text: str
    truncated: bool = False


def text_of(completion: Completion | None) -> str | None:
    return None if completion is None else completion.text


@dataclass
class EvolvedPrompt:
    """One evolved prompt, its seed (``parent_id``), how it was made and whether it is kept."""

    prompt: str
    parent_id: str
    mutation: str
    step: int
    status: str = "kept"  # one of STATUSES
    raw: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def evolved_status(parsed: str | None, template: str = "") -> str:
    """``kept``, ``empty`` (nothing after the header) or ``unusable`` (template text leaked in: the
    template's words, or a run of ``ECHO_WORDS`` consecutive words of ``template`` — the evolver
    instruction without the seed prompt)."""
    if not parsed:
        return "empty"
    if _TEMPLATE_WORDS.search(parsed) or (template and _word_runs(parsed) & _word_runs(template)):
        return "unusable"
    return "kept"


#: An evolved prompt that repeats this many consecutive words of its instruction echoes the template.
ECHO_WORDS = 6
_WORD = re.compile(r"\w+")


def _word_runs(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1)}


def feedback_context(feedback: dict | None) -> str:
    """Our preamble that shows the evolver how the current policy answered the seed."""
    if not feedback:
        return ""
    return (
        "Context: an AI assistant was asked the prompt below. Its best answer "
        f"(reward {feedback['best_reward']:.3f}) was:\n{feedback['best']}\n"
        f"Its worst answer (reward {feedback['worst_reward']:.3f}) was:\n{feedback['worst']}\n"
        "Use what the answers got wrong to make the new prompt test exactly that weakness.\n\n"
    )


def distilabel(module: str) -> ModuleType:
    """``import_module(module)`` of distilabel (the templates are read from it at run time). Its first import
    builds distilabel's pydantic models, and pydantic 2.12 warns about a ``Field(default=None)`` in them
    (UnsupportedFieldAttributeWarning): harmless for the templates, and noise on stderr, so held back here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The '\w+' attribute with value .* `Field\(\)` function",
                                category=UserWarning, module=r"pydantic\.")
        return importlib.import_module(module)
