"""Prompt evolvers (EVA §2 step 3): turn an informative prompt into new, harder prompts.

An evolver is built by a registered factory and offers
``evolve(seeds, generate, rng) -> list[EvolvedPrompt]`` where ``generate`` maps a list
of instructions for the evolver LLM to its completions (``None`` for a failed call,
a ``Truncated`` string for one cut at the token limit).

``evol_instruct`` follows distilabel's ``EvolInstruct``: each step picks one of the
mutation templates (four in-depth, one in-breadth) with a seeded local RNG, applies it
to the previous step's prompt, and every step's result is kept (``store_evolutions``).
The templates are imported from distilabel at run time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from eva_plugin import hookimpl

Generate = Callable[[list[str]], list["str | None"]]


STATUSES = ("kept", "empty", "truncated", "unusable", "duplicate")


class Truncated(str):
    """An evolver LLM output that hit the token limit before it ended: never kept."""

#: Headers an evolver LLM may echo before the new prompt (text after the last one is kept):
#: distilabel's ``#Rewritten Prompt#:`` / ``#Created Prompt#:`` anywhere, or a line that
#: starts with "Rewritten/New/Evolved prompt:" (markdown emphasis allowed).
_HEADER = re.compile(
    r"#\s*(?:the\s+)?(?:rewritten|created)\s+prompt\s*#\s*:?[*_ \t]*"
    r"|^[ \t>*_#]*(?:the\s+)?(?:rewritten|created|new|evolved)\s+(?:prompt|instruction)\b[*_ \t]*[:：][*_ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
#: Template words that must not survive into an evolved prompt.
_TEMPLATE_WORDS = re.compile(r"(?:given|rewritten|created)\s+prompt", re.IGNORECASE)


@dataclass
class EvolvedPrompt:
    prompt: str
    parent_id: str
    mutation: str
    step: int
    status: str = "kept"  # kept | empty | truncated | unusable | duplicate
    raw: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def parse_evolved(output: str | None) -> str | None:
    """The new prompt in an evolver output: the text after the last header, else the whole text."""
    if output is None:
        return None
    text = output
    matches = list(_HEADER.finditer(text))
    if matches:
        text = text[matches[-1].end():]
    text = text.strip().strip('"').strip()
    return text or None


def evolved_status(parsed: str | None) -> str:
    """``kept``, ``empty`` (nothing after the header) or ``unusable`` (template text leaked in)."""
    if not parsed:
        return "empty"
    return "unusable" if _TEMPLATE_WORDS.search(parsed) else "kept"


def mutation_templates() -> dict[str, str]:
    """distilabel's EvolInstruct templates (``CONSTRAINTS`` … ``BREADTH``), imported at run time."""
    from distilabel.steps.tasks.evol_instruct.utils import MUTATION_TEMPLATES

    return dict(MUTATION_TEMPLATES)


class EvolInstruct:
    """Chained EvolInstruct mutations; ``num_evolutions`` steps per seed, all kept.

    ``candidates > 1`` samples that many rewrites per step and keeps the first usable one
    (multi-shot evolving, for evolver LLMs that often miss the format); 1 is the paper.
    """

    placeholder = "<PROMPT>"

    def __init__(
        self, num_evolutions: int = 4, candidates: int = 1, templates: dict[str, str] | None = None, **_: object
    ) -> None:
        self.num_evolutions = int(num_evolutions)
        self.candidates = max(1, int(candidates))
        self.templates = templates if templates is not None else mutation_templates()
        self.mutations = sorted(self.templates)

    def instruction(self, mutation: str, prompt: str) -> str:
        return self.templates[mutation].replace(self.placeholder, prompt)

    def evolve(
        self, seeds: Sequence[dict], generate: Generate, rng: np.random.Generator
    ) -> list[EvolvedPrompt]:
        """Evolve every seed ``num_evolutions`` times; one batched LLM call per step."""
        current = [s["prompt"] for s in seeds]
        results: list[EvolvedPrompt] = []
        for step in range(1, self.num_evolutions + 1):
            picks = [self.mutations[i] for i in rng.integers(len(self.mutations), size=len(seeds))]
            k = self.candidates
            outputs = generate([self.instruction(m, p) for m, p in zip(picks, current) for _ in range(k)])
            for i, (seed, mutation) in enumerate(zip(seeds, picks)):
                judged = [(raw, *_judge(raw)) for raw in outputs[i * k : (i + 1) * k]]
                raw, parsed, status = next((j for j in judged if j[2] == "kept"), judged[0])
                results.append(EvolvedPrompt(
                    prompt=parsed or "", parent_id=seed["prompt_id"], mutation=mutation, step=step,
                    status=status, raw=raw or "",
                ))
                if status == "kept":
                    current[i] = parsed
        return results


def _judge(raw: str | None) -> tuple[str | None, str]:
    parsed = parse_evolved(raw)
    return parsed, "truncated" if isinstance(raw, Truncated) else evolved_status(parsed)


def mark_duplicates(evolved: list[EvolvedPrompt], existing: Sequence[str]) -> list[EvolvedPrompt]:
    """Mark exact duplicates (after whitespace/case normalisation) of earlier or existing prompts."""
    seen = {_normal(p) for p in existing}
    for e in evolved:
        if e.status != "kept":
            continue
        key = _normal(e.prompt)
        if key in seen:
            e.status = "duplicate"
        seen.add(key)
    return evolved


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


@hookimpl
def register_evolvers(register):
    register("evol_instruct", EvolInstruct)
