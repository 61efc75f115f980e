"""Length-sorted batches under a padded-token budget, and a model's context limit: shared by the
generation backends and the reward models."""

from __future__ import annotations


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch holds at most ``batch_size`` items and, when ``max_tokens`` is set, at most
    ``max_tokens`` padded tokens (items x longest item); an item longer than the budget
    gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        full = len(current) >= batch_size or (
            max_tokens is not None and current and (len(current) + 1) * longest > max_tokens)
        if full:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


#: ``tokenizer.model_max_length`` of a tokenizer that sets no limit is a huge sentinel (1e30).
NO_LIMIT = 10**9


def context_limit(model, tokenizer=None) -> int | None:
    """The most tokens ``model`` takes: the smallest of its config's position limit
    (``max_position_embeddings``, ``n_positions``, ``max_sequence_length``) and a finite
    ``tokenizer.model_max_length``; None when neither says."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_sequence_length")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    finite = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < NO_LIMIT]
    return min(finite) if finite else None
