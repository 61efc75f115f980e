"""``self_instruct``: independent variants of a seed with distilabel's SelfInstruct template.

Unlike the Evol* chains, one call asks for all ``num_evolutions`` variants at once; the
reply is read one query per line. The template comes from distilabel at run time; its
``criteria_for_query_generation`` is our ``CRITERIA`` (the EVA authors' change: variants
about as long and detailed as the seed), which *replaces* distilabel's default criteria
(those ask for 1-2 sentence queries, which would contradict it).
``eva.evolver_options: {criteria: "..."}`` sends other text instead (``""``: distilabel's
default criteria).
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

#: Our query-generation criteria (own wording), sent as distilabel's ``criteria_for_query_generation``.
CRITERIA = (
    "Keep every query about as long and as detailed as the context: a similar length and a similar "
    "number of requirements.\n"
    "Write each query as one self-contained instruction that makes sense without the context.\n"
    "Make the queries differ from one another in topic, task and wording.\n"
    "Keep every query answerable by a text-only AI assistant."
)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def self_instruct_template() -> tuple[str, str, str]:
    """distilabel's template text, its default criteria and application description."""
    Distilabel = distilabel("distilabel.steps.tasks.self_instruct").SelfInstruct  # noqa: N806

    text = (resources.files("distilabel") / "steps" / "tasks" / "templates" / "self-instruct.jinja2").read_text()
    fields = Distilabel.model_fields
    return text, fields["criteria_for_query_generation"].default, fields["application_description"].default


def split_queries(output: str | None) -> list[str]:
    """One query per non-empty line, list markers removed (distilabel splits on newlines)."""
    if not output:
        return []
    return [q for line in output.split("\n") if (q := _LIST_MARK.sub("", line).strip().strip('"').strip())]


@dataclass(frozen=True)
class SelfInstructOptions(Options):
    criteria: str | None = option(None, "The query-generation criteria sent to the LLM (default: ours, "
                                  "`CRITERIA`); empty: distilabel's own.")


class SelfInstruct:
    """``num_evolutions`` independent variants per seed from one LLM call each (x ``candidates``)."""

    Options = SelfInstructOptions

    @classmethod
    def from_options(cls, options: SelfInstructOptions, context: EvolverContext) -> SelfInstruct:
        """The registered factory."""
        return cls(context.num_evolutions, context.candidates, **options.as_dict())

    def __init__(self, num_evolutions: int = 4, candidates: int = 1, criteria: str | None = None) -> None:
        """``criteria``: the text sent as the query-generation criteria (default ``CRITERIA``);
        ``""``: distilabel's own default criteria."""
        from jinja2 import Template

        if criteria is not None and not isinstance(criteria, str):
            raise RecipeError(f"eva.evolver_options.criteria must be text, not {type(criteria).__name__}")
        self.num_evolutions = int(num_evolutions)
        self.candidates = max(1, int(candidates))
        text, default, application = self_instruct_template()
        self.template = Template(text)
        text_given = CRITERIA if criteria is None else criteria.strip()
        self.criteria = text_given or default
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
