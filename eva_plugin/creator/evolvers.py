"""Prompt evolvers (EVA §2 step 3): turn an informative prompt into new, harder prompts.

An evolver is built by a registered factory and offers
``evolve(seeds, generate, rng) -> list[EvolvedPrompt]`` where ``generate`` maps a list
of instructions for the evolver LLM to its completions (``None`` for a failed call,
a ``Completion`` with ``truncated`` set for one cut at the token limit).

Every template comes from distilabel at run time (never copied here):

- ``evol_instruct``: distilabel's ``EvolInstruct`` mutations (four in-depth, one
  in-breadth); each step applies one, picked by a seeded local RNG, to the previous
  step's prompt, and every step is kept (``store_evolutions``);
- ``evol_complexity``: the same chain with the in-depth mutations only (``EvolComplexity``);
- ``evol_quality``: the same chain; each step asks the prompt rewriter to apply one of
  ``EvolQuality``'s five quality methods (helpfulness, relevance, depth, creativity,
  detail) to the *prompt*, as the EVA authors adapted it;
- ``self_instruct`` (``self_instruct.py``): distilabel's ``SelfInstruct`` query-generation
  template, asking in one call for ``num_evolutions`` independent variants of the seed, with our own
  criteria (each variant about as long and detailed as the seed) in place of distilabel's.

Options (``eva.evolver_options``): the Evol* evolvers take ``mutations``, a list of template
names to draw from (e.g. ``[CONSTRAINTS, DEEPENING]``); ``self_instruct`` takes ``criteria``.

With feedback on, each instruction is preceded by the seed's best and worst sampled
responses and their rewards (``feedback_context``), so the evolver sees where the
policy is weak (EVA §7).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eva_plugin.creator.evolved import (
    STATUSES,
    Completion,
    EvolvedPrompt,
    Generate,
    distilabel,
    evolved_status,
    feedback_context,
    text_of,
)
from eva_plugin.errors import RecipeError
from eva_plugin.options import EvolverContext, Options, option

# the shared pieces stay importable from here (the loop and the report import them)
__all__ = ["STATUSES", "EvolComplexity", "EvolInstruct", "EvolQuality", "EvolvedPrompt", "Generate", "Completion",
           "evolved_status", "feedback_context", "parse_evolved"]

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
    r"\n\s*\n[ \t*_>(]*(?:explanation\b|changes?\s*(?:made)?\s*:"
    r"|(?:this|the|in this|my)\s+(?:new|evolved|created)\s+(?:prompt|version|instruction)\b|" + _SELF_TALK + r")"
    r"|(?<=[.!?\"'])[ \t]+(?:" + _SELF_TALK + r")",
    re.IGNORECASE,
)
#: A "Note" paragraph after a blank line: part of the prompt ("Note: it must rhyme") unless
#: it talks about the rewrite itself (``_ABOUT_REWRITE``), then it and the rest are cut.
_NOTE = re.compile(r"\n\s*\n[ \t*_>(]*note\b[^\n]*(?:\n(?!\s*\n)[^\n]*)*", re.IGNORECASE)
_ABOUT_REWRITE = re.compile(
    r"\bi(?:'ve| have)?\s+(?:added|rewrote|rewritten|made|replaced|increased|changed|introduced|included|"
    r"modified|expanded|kept|removed|turned)\b"
    r"|\b(?:rewrit\w*|revised|evolved|created|new|original|given|previous|old)\s+(?:prompt|instruction)s?\b"
    r"|\b(?:rewrit\w*|revised|evolved)\s+versions?\b"  # "the new version must …" is a task's own words
    r"|\bthis\s+rewrit\w*|#\s*(?:the\s+)?(?:given|rewritten|created)\s+prompt\s*#",
    re.IGNORECASE,
)
def parse_evolved(output: str | None) -> str | None:
    """The new prompt in an evolver output: the text after the last header (else the whole text),
    without a trailing explanation of the rewrite."""
    if output is None:
        return None
    text = output
    matches = list(_HEADER.finditer(text))
    if matches:
        text = text[matches[-1].end():]
    cuts = [m.start() for m in _NOTE.finditer(text) if _ABOUT_REWRITE.search(m.group())]
    trailer = _TRAILER.search(text)
    if trailer:
        cuts.append(trailer.start())
    if cuts:
        text = text[: min(cuts)]
    text = text.strip().strip('"').strip()
    return text or None


def mutation_templates() -> dict[str, str]:
    """distilabel's EvolInstruct templates (``CONSTRAINTS`` … ``BREADTH``), imported at run time."""
    return dict(distilabel("distilabel.steps.tasks.evol_instruct.utils").MUTATION_TEMPLATES)


def complexity_templates() -> dict[str, str]:
    """distilabel's EvolComplexity templates: the in-depth mutations only."""
    return dict(distilabel("distilabel.steps.tasks.evol_instruct.evol_complexity.utils").MUTATION_TEMPLATES)


def _method(template: str, frame: str) -> str:
    """The method sentence that ``frame.format(method)`` put into ``template``."""
    head, tail = frame.split("{}")
    if not (template.startswith(head) and template.endswith(tail)):
        raise ValueError("distilabel template does not match its frame; check the distilabel version")
    return template[len(head) : len(template) - len(tail)]


def quality_methods() -> dict[str, str]:
    """EvolQuality's five method sentences (HELPFULNESS … DETAILS), cut out of distilabel's templates."""
    utils = distilabel("distilabel.steps.tasks.evol_quality.utils")
    return {name: _method(t, utils.REWRITE_INSTRUCTION) for name, t in utils.MUTATION_TEMPLATES.items()}


def quality_templates() -> dict[str, str]:
    """Prompt-rewriting templates that ask for EvolQuality's methods applied to the prompt.

    distilabel's ``EvolQuality`` rewrites *responses*; the EVA authors used its methods on
    prompts. Each method sentence (with "Response" read as "Prompt") goes into
    distilabel's EvolInstruct prompt-rewriter frame.
    """
    frame = distilabel("distilabel.steps.tasks.evol_instruct.utils").REWRITE_INSTRUCTION
    return {name: frame.format(re.sub(r"\b[Rr]esponse\b", "Prompt", m))
            for name, m in quality_methods().items()}


def pick_templates(templates: dict[str, str], names: list[str] | None, evolver: str) -> dict[str, str]:
    """The named subset of ``templates`` (all of them for ``None``); an unknown name lists the known ones."""
    if names is None:
        return templates
    if isinstance(names, str) or not names:
        raise RecipeError(f"eva.evolver_options.mutations must be a non-empty list of names; "
                          f"{evolver} knows: {', '.join(sorted(templates))}")
    unknown = [n for n in names if n not in templates]
    if unknown:
        raise RecipeError(f"eva.evolver_options.mutations: {evolver} has no mutation "
                          f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(templates))}")
    return {n: templates[n] for n in names}


@dataclass(frozen=True)
class EvolInstructOptions(Options):
    mutations: list[str] | None = option(None, "The mutation templates to draw from, e.g. [CONSTRAINTS, DEEPENING] "
                                         "(default: all of them).")


class EvolInstruct:
    """Chained EvolInstruct mutations; ``num_evolutions`` steps per seed, all kept.

    ``candidates > 1`` samples that many rewrites per step and keeps the first usable one
    (multi-shot evolving, for evolver LLMs that often miss the format); 1 is the paper.
    """

    name = "evol_instruct"
    placeholder = "<PROMPT>"

    Options = EvolInstructOptions

    @classmethod
    def from_options(cls, options: EvolInstructOptions, context: EvolverContext) -> EvolInstruct:
        """The registered factory."""
        return cls(context.num_evolutions, context.candidates, **options.as_dict())

    def __init__(self, num_evolutions: int = 4, candidates: int = 1, mutations: list[str] | None = None) -> None:
        """``mutations``: the template names to draw from (default: all of them)."""
        self.num_evolutions = int(num_evolutions)
        self.candidates = max(1, int(candidates))
        self.templates = pick_templates(self.default_templates(), mutations, self.name)
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
                frame = self.templates[mutation].replace(self.placeholder, " ")
                judged = [(raw, *_judge(raw, frame)) for raw in outputs[i * k : (i + 1) * k]]
                raw, parsed, status = next((j for j in judged if j[2] == "kept"), judged[0])
                results.append(EvolvedPrompt(
                    prompt=parsed or "", parent_id=seed["prompt_id"], mutation=mutation, step=step,
                    status=status, raw=text_of(raw) or "",
                ))
                if status == "kept":
                    current[i] = parsed
        return results


def _judge(raw: Completion | None, frame: str) -> tuple[str | None, str]:
    parsed = parse_evolved(text_of(raw))
    return parsed, "truncated" if raw is not None and raw.truncated else evolved_status(parsed, frame)


class EvolComplexity(EvolInstruct):
    """EvolInstruct's chain with the in-depth mutations only (best in the EVA paper: 60.6)."""

    name = "evol_complexity"

    @staticmethod
    def default_templates() -> dict[str, str]:
        return complexity_templates()


class EvolQuality(EvolInstruct):
    """EvolInstruct's chain with EvolQuality's quality methods applied to the prompt."""

    name = "evol_quality"

    @staticmethod
    def default_templates() -> dict[str, str]:
        return quality_templates()
