"""``self_instruct``: independent variants of a seed with distilabel's SelfInstruct template.

Unlike the Evol* chains, one call asks for all ``num_evolutions`` variants at once; the
reply is read one query per line. The template and its default criteria come from distilabel
at run time. The EVA authors used distilabel 1.4.1's one-shot SelfInstruct and changed one
thing, the instruction on conciseness, so that variants have about the seed's length (paper,
appendix; their text is not published). The default here does the same: distilabel's own
criteria with the line that limits queries to 1-2 sentences replaced by ``LENGTH_CRITERION``
(our wording), every other line kept. ``eva.evolver_options: {criteria: "..."}`` sends other
text instead (``""``: distilabel's default criteria unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from eva_plugin.creator.evolved import (
    EvolvedPrompt,
    Generate,
    distilabel,
    evolved_status,
    feedback_context,
    text_of,
)
from eva_plugin.errors import RecipeError
from eva_plugin.options import EvolverContext, Options, option

#: Our wording of the authors' change to distilabel's conciseness criterion (variants as long as the seed);
#: it also keeps that line's other requirement, queries an AI assistant can answer in text.
LENGTH_CRITERION = ("Keep every query answerable by a text-only AI assistant, and about as long and as detailed as "
                    "the context: a similar length and a similar number of requirements.")
#: How distilabel's conciseness line is found among its default criteria.
_CONCISENESS = re.compile(r"\b1\s*-\s*2\s+sentences?\b|\bone or two sentences?\b", re.I)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def self_instruct_template() -> tuple[str, str, str]:
    """distilabel's template text, its default criteria and application description."""
    Distilabel = distilabel("distilabel.steps.tasks.self_instruct").SelfInstruct  # noqa: N806

    text = (resources.files("distilabel") / "steps" / "tasks" / "templates" / "self-instruct.jinja2").read_text()
    fields = Distilabel.model_fields
    return text, fields["criteria_for_query_generation"].default, fields["application_description"].default


def paper_criteria(default: str) -> str:
    """distilabel's default criteria with its conciseness line replaced by ``LENGTH_CRITERION`` (the EVA
    authors' change). A distilabel without such a line gets ours appended to its own."""
    lines = default.split("\n")
    hits = [i for i, line in enumerate(lines) if _CONCISENESS.search(line)]
    if not hits:
        return "\n".join([*lines, LENGTH_CRITERION])
    return "\n".join(LENGTH_CRITERION if i == hits[0] else line for i, line in enumerate(lines) if i not in hits[1:])


def split_queries(output: str | None) -> list[str]:
    """One query per non-empty line, list markers removed (distilabel splits on newlines)."""
    if not output:
        return []
    return [q for line in output.split("\n") if (q := _LIST_MARK.sub("", line).strip().strip('"').strip())]


@dataclass(frozen=True)
class SelfInstructOptions(Options):
    criteria: str | None = option(None, "The query-generation criteria sent to the LLM (default: distilabel's "
                                  "with its 1-2 sentence limit replaced by a length like the seed's, the EVA "
                                  "authors' change); empty: distilabel's own, unchanged.")


class SelfInstruct:
    """``num_evolutions`` independent variants per seed from one LLM call each (x ``candidates``)."""

    Options = SelfInstructOptions

    @classmethod
    def from_options(cls, options: SelfInstructOptions, context: EvolverContext) -> SelfInstruct:
        """The registered factory."""
        return cls(context.num_evolutions, context.candidates, **options.as_dict())

    def __init__(self, num_evolutions: int = 4, candidates: int = 1, criteria: str | None = None) -> None:
        """``criteria``: the text sent as the query-generation criteria (default ``paper_criteria``);
        ``""``: distilabel's own default criteria."""
        from jinja2 import Template

        if criteria is not None and not isinstance(criteria, str):
            raise RecipeError(f"eva.evolver_options.criteria must be text, not {type(criteria).__name__}")
        self.num_evolutions = int(num_evolutions)
        self.candidates = max(1, int(candidates))
        text, default, application = self_instruct_template()
        self.template = Template(text)
        self.criteria = paper_criteria(default) if criteria is None else (criteria.strip() or default)
        self.application = application

    def instruction(self, prompt: str, feedback: dict | None = None) -> str:
        body = self.template.render(
            input=prompt, num_instructions=self.num_evolutions,
            criteria_for_query_generation=self.criteria, application_description=self.application,
        )
        return feedback_context(feedback) + body

    def evolve(self, seeds: Sequence[dict], generate: Generate, rng: np.random.Generator) -> list[EvolvedPrompt]:
        k = self.candidates
        frame = self.instruction("")
        outputs = generate([self.instruction(s["prompt"], s.get("feedback")) for s in seeds for _ in range(k)])
        results: list[EvolvedPrompt] = []
        for i, seed in enumerate(seeds):
            tries = outputs[i * k : (i + 1) * k]
            # the candidate with the most usable queries wins
            scored = [(sum(evolved_status(q, frame) == "kept" for q in split_queries(text_of(raw))), j)
                      for j, raw in enumerate(tries)]
            raw = tries[max(scored)[1]]
            queries = split_queries(text_of(raw))[: self.num_evolutions]
            cut = raw is not None and raw.truncated
            for step, query in enumerate(queries, start=1):
                last_and_cut = cut and step == len(queries)  # only the final line can be cut off
                status = "truncated" if last_and_cut else evolved_status(query, frame)
                results.append(EvolvedPrompt(query, seed["prompt_id"], "SELF_INSTRUCT", step, status,
                                             text_of(raw) or ""))
            if not queries:
                results.append(EvolvedPrompt("", seed["prompt_id"], "SELF_INSTRUCT", 1,
                                             "truncated" if cut else "empty", text_of(raw) or ""))
        return results
