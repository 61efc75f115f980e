"""Prompt complexity and quality by an LLM judge (``iter_<t>/judged``; the paper's §E.1).

The paper rates the seed set and each iteration's prompts on two 1–5 scales (UltraFeedback seeds
2.90 / 3.18, EVA's third set 3.98 / 3.73). With ``eva.judge_model`` set, ``iter_0/judged`` rates the
seed pool and ``iter_<t>/judged`` rates X_t (``iter_<t>/prompts``), at most ``judge_size`` prompts per
set (a seeded random subset), one request per prompt and scale, through any backend
(``eva.judge_generation``). The manifest holds each scale's mean and standard error, overall and by
prompt origin (seed / buffer / evolved), and how many replies held no rating.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets import Dataset

from eva_plugin.artifacts import StageResult
from eva_plugin.content import local_id
from eva_plugin.context import Iteration, Run, Stage, as_dict
from eva_plugin.prompt_sets import prompt_set_id, prompt_set_stage
from eva_plugin.runtime import SHARED
from eva_plugin.stats import mean_stderr

#: Our two rubrics (the scales of §E.1, worded by us); ``{prompt}`` is the rated prompt.
RUBRICS = {
    "complexity": (
        "How difficult and complex is it to answer the request below well? Rate it from 1 to 5, where "
        "1 = very simple, 2 = simple, 3 = moderate, 4 = difficult and 5 = very difficult.\n\n"
        "Request:\n{prompt}\n\nReply with the rating only, a single number from 1 to 5."
    ),
    "quality": (
        "How good is the request below as a task for an AI assistant? Weigh how helpful, relevant, "
        "accurate, deep, creative and detailed it is, and rate it from 1 to 5, where 1 = poor, "
        "2 = below average, 3 = average, 4 = good and 5 = excellent.\n\n"
        "Request:\n{prompt}\n\nReply with the rating only, a single number from 1 to 5."
    ),
}
SCALES = tuple(RUBRICS)
_RATING = re.compile(r"(?<![\d.])([1-5])(?!\.?\d)")


def parse_rating(reply: str) -> float | None:
    """The first stand-alone digit 1–5 of ``reply`` ("4", "Rating: 4/5", "**3**"), or None."""
    found = _RATING.search(reply or "")
    return float(found.group(1)) if found else None


class Judged(Stage):
    """``iter_<t>/judged``: complexity and quality ratings of (a subset of) the seed pool or X_t."""

    name, mode = "judged", SHARED

    def iteration(self, run: Run, t: int) -> Iteration:
        it = Iteration(run, t)
        it.sample_with(run.eva.judge_model, run.eva.judge_generation)  # the judge LLM in the sampler's place
        return it

    def config(self, it: Iteration) -> dict:
        eva = it.eva
        return {"prompts": prompt_set_id(it.run, it.t), "judge_model": local_id(eva.judge_model),
                "judge_generation": as_dict(eva.judge_generation), "size": eva.judge_size,
                "rubrics": RUBRICS, "seed": it.run.seed}

    def work(self, it: Iteration, tmp: Path) -> StageResult:
        rows = it.load(prompt_set_stage(it.t))
        if it.eva.judge_size is not None and it.eva.judge_size < len(rows):
            picked = it.rng(self.name).choice(len(rows), size=it.eva.judge_size, replace=False)
            rows = rows.select(sorted(int(i) for i in picked))
        prompts = list(rows["prompt"])
        requests = [RUBRICS[scale].format(prompt=p) for scale in SCALES for p in prompts]
        replies, counts = it.sample(requests, 1, self.name)
        texts = [r[0] if r else "" for r in replies]
        answers = {scale: texts[i * len(prompts):(i + 1) * len(prompts)] for i, scale in enumerate(SCALES)}
        ratings = {scale: [parse_rating(text) for text in answers[scale]] for scale in SCALES}
        origins = list(rows["origin"]) if "origin" in rows.column_names else ["seed"] * len(prompts)
        columns = {"prompt_id": list(rows["prompt_id"]), "prompt": prompts, "origin": origins, **ratings,
                   **{f"{scale}_reply": answers[scale] for scale in SCALES}}
        stats = {"prompts": len(prompts), **rating_summary(ratings, origins), **counts}
        note = ", ".join(f"{s} {_fmt(stats[f'mean_{s}'])} ± {_fmt(stats[f'stderr_{s}'])}" for s in SCALES)
        return StageResult(Dataset.from_dict(columns), stats, note=note)


def rating_summary(ratings: dict[str, list[float | None]], origins: list[str]) -> dict:
    """Per scale: ``mean_<scale>``, ``stderr_<scale>`` and ``unrated_<scale>`` (replies without a rating),
    and ``by_origin``: ``{origin: {prompts, <scale>: mean}}``; None where nothing was rated."""
    out: dict = {}
    for scale, values in ratings.items():
        mean, stderr = mean_stderr(values)
        out.update({f"mean_{scale}": mean, f"stderr_{scale}": stderr,
                    f"unrated_{scale}": sum(v is None for v in values)})
    out["by_origin"] = {
        origin: {"prompts": origins.count(origin),
                 **{scale: mean_stderr([v for v, o in zip(values, origins) if o == origin])[0]
                    for scale, values in ratings.items()}}
        for origin in sorted(set(origins))}
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
