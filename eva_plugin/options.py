"""What a plugin factory is given: its own declared ``Options`` and what the run owns (a context).

A backend, reward model or evolver factory declares its options as an ``Options`` subclass (a
frozen dataclass whose fields have a default, a type, a ``help`` and optionally a range) and
exposes it as ``factory.Options``; a factory without one takes no options. The recipe's
``*_options`` mapping is checked against that schema when the recipe is read (an unknown key is one
line naming the allowed ones) and the factory is called with the parsed object:

- backends: ``factory(model_path, options, context: ModelContext) -> Backend``
- reward models: ``factory(path, options, context: ModelContext) -> RewardModel``
- evolvers: ``factory(options, context: EvolverContext) -> Evolver``
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from eva_plugin.typed import check_fields


def option(default: Any = None, help: str = "", **rules: Any) -> Any:
    """A field of an ``Options`` schema: its default, its help text and its range (``ge``, ``gt``, ``le``,
    ``lt``, ``choices``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


@dataclass(frozen=True)
class Options:
    """Base of every option schema; subclasses are frozen dataclasses of ``option(...)`` fields.

    ``not_fingerprinted``: options that change how a result is obtained, never the result (a request rate,
    a price): stage fingerprints leave them out, so changing one does not make finished stages stale."""

    not_fingerprinted: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NoOptions(Options):
    """A factory that takes no options."""


@dataclass(frozen=True)
class ModelContext:
    """What the run decides for every model it builds (backends and reward models), never a recipe's
    ``*_options``: where the model runs, how it is loaded, and how generation batches and seeds."""

    device: str = "cpu"
    dtype: str | None = None  # the block's `dtype`, else the recipe's
    trust_remote_code: bool = False  # the recipe's
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # revision, attention, quantization
    seed: int = 0  # the run's seed
    batch_size: int = 64  # generation: at most this many prompts per call
    batch_tokens: int | None = None  # generation: token budget of a call (None: the backend sizes it)
    sampling: str = "seeded"  # generation: seeded (batch-invariant) or native


@dataclass(frozen=True)
class EvolverContext:
    """What the run decides for an evolver: evolutions per seed and LLM samples per step."""

    num_evolutions: int = 4
    candidates: int = 1
