"""Prompt evolvers (EVA §2 step 3): turn an informative prompt into new, harder prompts.

An evolver is built by a registered factory and offers
``evolve(seeds, generate, rng) -> list[EvolvedPrompt]`` where ``generate`` maps a list
of instructions for the evolver LLM to its completions (``None`` for a failed call,
a ``Truncated`` string for one cut at the token limit).

Every template comes from distilabel at run time (never copied here):

- ``evol_instruct``: distilabel's ``EvolInstruct`` mutations (four in-depth, one
  in-breadth); each step applies one, picked by a seeded local RNG, to the previous
  step's prompt, and every step is kept (``store_evolutions``);
- ``evol_complexity``: the same chain with the in-depth mutations only (``EvolComplexity``);
- ``evol_quality``: the same chain; each step asks the prompt rewriter to apply one of
  ``EvolQuality``'s five quality methods (helpfulness, relevance, depth, creativity,
  detail) to the *prompt*, as the EVA authors adapted it;
- ``self_instruct``: distilabel's ``SelfInstruct`` query-generation template, asking in
  one call for ``num_evolutions`` independent variants of the seed, plus one criterion
  (ours) to keep each about as long as the seed.

With feedback on, each instruction is preceded by the seed's best and worst sampled
responses and their rewards (``feedback_context``), so the evolver sees where the
policy is weak (EVA §7).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from eva_plugin import hookimpl

Generate = Callable[[list[str]], list["str | None"]]


STATUSES = ("kept", "empty", "truncated", "unusable", "too_short", "too_long", "refusal", "duplicate",
            "near_duplicate")


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
#: The evolver explaining its rewrite, after a blank line or (stricter) after a sentence:
#: everything from there on is cut.
_SELF_TALK = (r"(?:this|the|in this|my)\s+(?:rewritten|revised)\s+(?:prompt|version|instruction)\b"
              r"|this\s+rewrit\w*\b|i(?:'ve| have)\s+(?:added|rewritten|made|replaced|increased)\b")
_TRAILER = re.compile(
    r"\n\s*\n[ \t*_>(]*(?:note\b|explanation\b|changes?\s*(?:made)?\s*:"
    r"|(?:this|the|in this|my)\s+(?:new|evolved|created)\s+(?:prompt|version|instruction)\b|" + _SELF_TALK + r")"
    r"|(?<=[.!?\"'])[ \t]+(?:" + _SELF_TALK + r")",
    re.IGNORECASE,
)
#: Template words that must not survive into an evolved prompt.
_TEMPLATE_WORDS = re.compile(r"(?:given|rewritten|created)\s+prompt", re.IGNORECASE)


@dataclass
class EvolvedPrompt:
    prompt: str
    parent_id: str
    mutation: str
    step: int
    status: str = "kept"  # one of STATUSES
    raw: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def parse_evolved(output: str | None) -> str | None:
    """The new prompt in an evolver output: the text after the last header (else the whole text),
    without a trailing explanation of the rewrite."""
    if output is None:
        return None
    text = output
    matches = list(_HEADER.finditer(text))
    if matches:
        text = text[matches[-1].end():]
    trailer = _TRAILER.search(text)
    if trailer:
        text = text[: trailer.start()]
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


def complexity_templates() -> dict[str, str]:
    """distilabel's EvolComplexity templates: the in-depth mutations only."""
    from distilabel.steps.tasks.evol_instruct.evol_complexity.utils import MUTATION_TEMPLATES

    return dict(MUTATION_TEMPLATES)


def _method(template: str, frame: str) -> str:
    """The method sentence that ``frame.format(method)`` put into ``template``."""
    head, tail = frame.split("{}")
    if not (template.startswith(head) and template.endswith(tail)):
        raise ValueError("distilabel template does not match its frame; check the distilabel version")
    return template[len(head) : len(template) - len(tail)]


def quality_methods() -> dict[str, str]:
    """EvolQuality's five method sentences (HELPFULNESS … DETAILS), cut out of distilabel's templates."""
    from distilabel.steps.tasks.evol_quality.utils import MUTATION_TEMPLATES, REWRITE_INSTRUCTION

    return {name: _method(t, REWRITE_INSTRUCTION) for name, t in MUTATION_TEMPLATES.items()}


def quality_templates() -> dict[str, str]:
    """Prompt-rewriting templates that ask for EvolQuality's methods applied to the prompt.

    distilabel's ``EvolQuality`` rewrites *responses*; the EVA authors used its methods on
    prompts. Each method sentence (with "Response" read as "Prompt") goes into
    distilabel's EvolInstruct prompt-rewriter frame.
    """
    from distilabel.steps.tasks.evol_instruct.utils import REWRITE_INSTRUCTION

    return {name: REWRITE_INSTRUCTION.format(re.sub(r"\b[Rr]esponse\b", "Prompt", m))
            for name, m in quality_methods().items()}


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
        self.templates = templates if templates is not None else self.default_templates()
        self.mutations = sorted(self.templates)

    @staticmethod
    def default_templates() -> dict[str, str]:
        return mutation_templates()

    def instruction(self, mutation: str, prompt: str, feedback: dict | None = None) -> str:
        return feedback_context(feedback) + self.templates[mutation].replace(self.placeholder, prompt)

    def evolve(
        self, seeds: Sequence[dict], generate: Generate, rng: np.random.Generator
    ) -> list[EvolvedPrompt]:
        """Evolve every seed ``num_evolutions`` times; one batched LLM call per step."""
        current = [s["prompt"] for s in seeds]
        results: list[EvolvedPrompt] = []
        for step in range(1, self.num_evolutions + 1):
            picks = [self.mutations[i] for i in rng.integers(len(self.mutations), size=len(seeds))]
            k = self.candidates
            outputs = generate([self.instruction(m, p, seed.get("feedback"))
                                for m, p, seed in zip(picks, current, seeds) for _ in range(k)])
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


class EvolComplexity(EvolInstruct):
    """EvolInstruct's chain with the in-depth mutations only (best in the EVA paper: 60.6)."""

    @staticmethod
    def default_templates() -> dict[str, str]:
        return complexity_templates()


class EvolQuality(EvolInstruct):
    """EvolInstruct's chain with EvolQuality's quality methods applied to the prompt."""

    @staticmethod
    def default_templates() -> dict[str, str]:
        return quality_templates()


@hookimpl
def register_evolvers(register):
    from eva_plugin.creator.self_instruct import SelfInstruct

    register("evol_instruct", EvolInstruct)
    register("evol_complexity", EvolComplexity)
    register("evol_quality", EvolQuality)
    register("self_instruct", SelfInstruct)
