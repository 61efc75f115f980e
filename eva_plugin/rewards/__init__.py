"""Reward models: score every sampled response of every prompt.

A reward model is built by a factory registered under a type name and offers
``score(conversations, responses) -> list[list[float]]`` and ``close()``.
Built in: ``sequence_classification`` (one scalar head, incl. remote-code models whose
output carries ``.score`` such as ArmoRM), ``embedding`` (prompt↔response cosine) and
``pairwise`` (a preference LM judging pairs; reward = mean win probability).
"""

from __future__ import annotations

from typing import Protocol

from eva_plugin.generation import Conversation


class RewardModel(Protocol):
    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]: ...

    def close(self) -> None: ...
