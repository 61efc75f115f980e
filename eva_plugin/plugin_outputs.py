"""What a plugin hands back, checked where it enters the loop (issue 20, class 4).

A reward model's ``score`` must return one list of numbers per prompt, one number per response; an
evolver's ``evolve`` a list of ``EvolvedPrompt`` whose ``prompt`` is text and whose ``parent_id`` is one
of its seeds. Anything else (a missing reward, ``None``, ``"1.0"``, ``True``, ±1e308) is one line
naming the plugin, instead of being zipped away, stored as text or overflowing a proxy later.
NaN and ±inf stay allowed: they mean "could not score" and are dropped per response, counted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from eva_plugin.errors import EvaError

#: The largest |reward| accepted. The proxies and pairs compute differences, squares of differences
#: (variance) and sums of those over every response of a stage in float64 (max ≈ 1.8e308): with
#: |r| ≤ 1e100 a squared difference is ≤ 4e200, so even 1e100 of them sum to a finite number, and
#: σ(r_i − r_j) and a length penalty stay exact. A reward beyond it is a scaling bug, not a preference.
REWARD_BOUND = 1e100

#: A stage needs this many distinct (prompt, response) pairs and finite rewards before one reward for all
#: of them says the reward model is constant (two texts may truly tie).
CONSTANT_MIN = 3


class PluginOutputError(EvaError, ValueError):
    """A plugin returned something the loop cannot use; the message names the plugin and the fix."""


def _as_list(value: Any) -> list | None:
    """A list/tuple, or an array with at least one dimension (numpy, torch), as a list; else None."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if getattr(value, "ndim", 0) >= 1 and hasattr(value, "tolist"):
        return value.tolist()
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:40]}…" if len(text) > 40 else text


def reward_value(value: Any, plugin: str) -> float:
    """One reward as a float: a real number (NaN and ±inf kept), never a bool, text or ``None``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy or torch scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PluginOutputError(
            f"reward model {plugin!r} returned {_show(value)} ({type(value).__name__}) as a reward; score() must "
            "return numbers (float), one per response (NaN where it cannot score)")
    number = float(value)
    if math.isfinite(number) and abs(number) > REWARD_BOUND:
        raise PluginOutputError(
            f"reward model {plugin!r} returned the reward {number:g}; rewards beyond ±{REWARD_BOUND:g} overflow the "
            "proxies' squared differences in float64: rescale the reward model's output")
    return number


def checked_rewards(scores: Any, responses: Sequence[Sequence[str]], plugin: str) -> list[list[float]]:
    """``scores`` (a reward model's ``score`` result for ``responses``) as floats, or one line naming
    ``plugin`` and what is wrong: the wrong number of lists or of rewards in one, or a value that
    is not a number within ±``REWARD_BOUND``."""
    rows = _as_list(scores)
    if rows is None:
        raise PluginOutputError(f"reward model {plugin!r} returned {_show(scores)} ({type(scores).__name__}) from "
                                "score(); it must return one list of rewards per prompt")
    if len(rows) != len(responses):
        raise PluginOutputError(f"reward model {plugin!r} returned {len(rows)} reward lists for {len(responses)} "
                                "prompts; score() must return one list per prompt, in order")
    out = []
    for row, ys in zip(rows, responses):
        values = _as_list(row)
        if values is None:
            raise PluginOutputError(f"reward model {plugin!r} returned {_show(row)} ({type(row).__name__}) for a "
                                    f"prompt's {len(ys)} responses; score() must return a list of rewards per prompt")
        if len(values) != len(ys):
            raise PluginOutputError(f"reward model {plugin!r} returned {len(values)} rewards for a prompt's "
                                    f"{len(ys)} responses; score() must return one reward per response")
        out.append([reward_value(v, plugin) for v in values])
    return out


def check_spread(rewards: Sequence[Sequence[float]], prompts: Sequence[str], responses: Sequence[Sequence[str]],
                 plugin: str, where: str, key: str = "eva.reward") -> None:
    """Refuse a reward model that gave every distinct response of a stage one and the same finite
    reward (it ranks nothing: no prompt would be informative and no pair could be built)."""
    distinct = {(p, y) for p, ys in zip(prompts, responses) for y in ys}
    finite = [r for rs in rewards for r in rs if math.isfinite(r)]
    values = set(finite)
    if len(values) == 1 and min(len(finite), len(distinct)) >= CONSTANT_MIN:
        n = sum(map(len, rewards))
        raise PluginOutputError(
            f"{where}: reward model {plugin!r} gave all {n} responses to {len(prompts)} prompts the same reward "
            f"{next(iter(values)):g} ({len(distinct)} distinct responses); it ranks nothing: check {key}_model "
            f"and {key}_options")


def checked_evolved(evolved: Any, seeds: Sequence[dict], plugin: str) -> list:
    """An evolver's ``evolve`` result, or one line naming ``plugin``: a list of ``EvolvedPrompt``
    with text prompts, statuses the loop knows and parents among the seeds."""
    from eva_plugin.creator.evolved import STATUSES, EvolvedPrompt

    items = evolved if isinstance(evolved, (list, tuple)) else None
    if items is None:
        raise PluginOutputError(f"evolver {plugin!r} returned {_show(evolved)} ({type(evolved).__name__}) from "
                                "evolve(); it must return a list of EvolvedPrompt")
    parents = {s["prompt_id"] for s in seeds}
    for item in items:
        if not isinstance(item, EvolvedPrompt):
            raise PluginOutputError(f"evolver {plugin!r} returned {_show(item)} ({type(item).__name__}) in its list; "
                                    "evolve() must return EvolvedPrompt records (eva_plugin.creator.evolved)")
        if not isinstance(item.prompt, str):
            raise PluginOutputError(f"evolver {plugin!r} returned the prompt {_show(item.prompt)} "
                                    f"({type(item.prompt).__name__}); an evolved prompt must be text (str)")
        if item.status not in STATUSES:
            raise PluginOutputError(f"evolver {plugin!r} returned the status {_show(item.status)}; known: "
                                    f"{', '.join(STATUSES)}")
        if item.parent_id not in parents:
            raise PluginOutputError(f"evolver {plugin!r} returned a prompt whose parent_id {_show(item.parent_id)} "
                                    "is none of its seeds' prompt_id")
    return list(items)


def no_pairs_message(t: int, stats: dict[str, int], prompts: int, plugin: str) -> str:
    """Why iteration ``t`` has no preference pair, with the numbers (``build_pairs``' counts)."""
    ties, same = stats.get("dropped_tie", 0), stats.get("dropped_identical", 0)
    nonfinite, few = stats.get("dropped_nonfinite", 0), stats.get("dropped_too_few", 0)
    return (f"iteration {t}: no usable preference pair from reward model {plugin!r}: of {prompts} prompts, {ties} "
            f"tie (every response the same reward), {same} have identical best and worst responses, {nonfinite} "
            f"fewer than two finite rewards, {few} fewer than two responses; raise eva.solver_samples or the "
            "sampling temperature, or check the reward model")
