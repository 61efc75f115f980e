"""The rewriter (EVA rebuttal, Table 28): rewrite each pair's chosen response before training.

The instruction is distilabel's ``EvolQuality`` response rewriter (imported at run time)
asking at once for all five of its methods — helpfulness, relevance, depth, creativity,
detail — while its own frame asks to add only 10–20 words (a similar length). A rewrite
is kept only if it is finished, non-empty and within ``max_length_ratio`` of the
original's length; otherwise the original stays and the reason is counted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

REWRITE_STATUSES = ("rewritten", "empty", "truncated", "length")
_HEADER = re.compile(r"#\s*rewritten\s+response\s*#\s*:?|^[ \t*_#]*rewritten\s+response\b[*_ \t]*:[*_ \t]*",
                     re.IGNORECASE | re.MULTILINE)


def rewrite_template() -> str:
    """distilabel's response-rewriting frame filled with all of EvolQuality's methods."""
    from eva_plugin.creator.evolved import distilabel
    from eva_plugin.creator.evolvers import quality_methods

    frame = distilabel("distilabel.steps.tasks.evol_quality.utils").REWRITE_INSTRUCTION
    return frame.format(" ".join(quality_methods().values()))


def rewrite_instruction(template: str, prompt: str, response: str) -> str:
    return template.replace("<PROMPT>", prompt).replace("<RESPONSE>", response)


def parse_rewrite(output: str | None) -> str:
    """The text after the last "#Rewritten Response#" header, else the whole output."""
    if not output:
        return ""
    matches = list(_HEADER.finditer(output))
    return (output[matches[-1].end():] if matches else output).strip()


def judge(original: str, output: str | None, finished: bool, max_length_ratio: float) -> tuple[str, str]:
    """(text to train on, status): the rewrite, or the original and why the rewrite was refused."""
    text = parse_rewrite(output)
    if not text:
        return original, "empty"
    if not finished:
        return original, "truncated"
    ratio = len(text) / max(1, len(original))
    if not (1 / max_length_ratio <= ratio <= max_length_ratio):
        return original, "length"
    return text, "rewritten"


def rewrite_pairs(
    pairs: list[dict], generate: Callable[[list[str]], tuple[list[str], list[bool]]], max_length_ratio: float
) -> tuple[list[dict], dict[str, int]]:
    """Pairs with ``chosen`` rewritten where the rewrite passes; ``chosen_original`` keeps the old text."""
    template = rewrite_template()
    instructions = [rewrite_instruction(template, p["prompt"][-1]["content"], p["chosen"][-1]["content"])
                    for p in pairs]
    outputs, finished = generate(instructions) if instructions else ([], [])
    counts: Counter = Counter()
    rows = []
    for pair, output, done in zip(pairs, outputs, finished):
        original = pair["chosen"][-1]["content"]
        text, status = judge(original, output, done, max_length_ratio)
        counts[status] += 1
        rows.append({**pair, "chosen": [{"role": "assistant", "content": text}], "chosen_original": original,
                     "rewrite_status": status})
    return rows, {s: counts.get(s, 0) for s in REWRITE_STATUSES}
