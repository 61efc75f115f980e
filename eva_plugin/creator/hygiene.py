"""Output hygiene for evolved prompts: exact duplicates always; length bounds, refusals and near
duplicates when a recipe asks for them (the paper keeps every evolution).

Near duplicates are found with MinHash over character 5-grams of the normalised text
(robust for short prompts, where one changed word breaks most word n-grams) and
locality-sensitive hashing
(bands of rows), then confirmed with the exact Jaccard similarity, so the check stays
fast for tens of thousands of prompts. The EVA authors' scripts skip de-duplication.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:no|')t|i cannot|i am unable|i'?m unable|"
    r"i won'?t|as an ai\b|as a language model)",
    re.IGNORECASE,
)
_PRIME = (1 << 61) - 1


@dataclass(frozen=True)
class Hygiene:
    """Bounds and thresholds; ``near_duplicate`` = Jaccard of character 5-gram sets (1.0 turns it off)."""

    min_words: int = 0
    max_words: int | None = None
    near_duplicate: float = 1.0
    drop_refusals: bool = False
    num_perm: int = 64
    bands: int = 16


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, n: int = 5) -> set[str]:
    norm = " ".join(words(text))
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text))


def length_status(text: str, rules: Hygiene) -> str | None:
    n = len(words(text))
    if n < rules.min_words:
        return "too_short"
    if rules.max_words is not None and n > rules.max_words:
        return "too_long"
    return None


class MinHashIndex:
    """MinHash signatures in LSH buckets; ``query`` returns indices with Jaccard >= threshold."""

    def __init__(self, threshold: float, num_perm: int = 64, bands: int = 16, seed: int = 0) -> None:
        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.threshold, self.bands, self.rows = threshold, bands, num_perm // bands
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
        self.sets: list[set[str]] = []

    def signature(self, grams: set[str]) -> np.ndarray:
        if not grams:
            return np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        h = np.array([zlib.crc32(g.encode()) for g in grams], dtype=np.uint64)
        # (a*h + b) mod p, in exact 64-bit-safe pieces: h < 2**32 and a, b < 2**61
        mixed = (np.multiply.outer(self.a >> np.uint64(32), h) % np.uint64(_PRIME) * np.uint64(1 << 32)
                 + np.multiply.outer(self.a & np.uint64(0xFFFFFFFF), h) + self.b[:, None]) % np.uint64(_PRIME)
        return mixed.min(axis=1)

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def query(self, grams: set[str]) -> list[int]:
        sig = self.signature(grams)
        candidates = {j for band, key in zip(self.buckets, self._keys(sig)) for j in band.get(key, ())}
        return sorted(j for j in candidates if jaccard(grams, self.sets[j]) >= self.threshold)

    def add(self, grams: set[str]) -> int:
        index = len(self.sets)
        self.sets.append(grams)
        for band, key in zip(self.buckets, self._keys(self.signature(grams))):
            band[key].append(index)
        return index


def screen(prompts: Sequence[str], existing: Sequence[str], rules: Hygiene,
           chains: Sequence[str] | None = None, existing_chains: Sequence[str] | None = None) -> list[str | None]:
    """A drop reason per prompt (``None`` = keep), in order: too_short, too_long, refusal (when
    asked), duplicate (same normalised text as an existing or earlier prompt), near_duplicate.

    ``chains`` names each prompt's chain (its seed's id) and ``existing_chains`` each existing
    prompt's own id: a near duplicate of a prompt of the same chain (its seed, an earlier step)
    is kept — an evolution is meant to resemble what it evolved from.
    """
    chains = list(chains) if chains is not None else [str(i) for i in range(len(prompts))]
    existing_chains = list(existing_chains) if existing_chains is not None else [None] * len(existing)
    index = MinHashIndex(rules.near_duplicate, rules.num_perm, rules.bands) if rules.near_duplicate < 1 else None
    owners: list[str | None] = []  # the chain of every prompt in the index
    seen = set()
    for text, chain in zip(existing, existing_chains):
        seen.add(" ".join(words(text)))
        if index is not None:
            index.add(shingles(text))
            owners.append(chain)
    reasons: list[str | None] = []
    for text, chain in zip(prompts, chains):
        reason = length_status(text, rules)
        if reason is None and rules.drop_refusals and is_refusal(text):
            reason = "refusal"
        key = " ".join(words(text))
        if reason is None and key in seen:
            reason = "duplicate"
        grams = shingles(text)
        if reason is None and index is not None and any(owners[j] != chain for j in index.query(grams)):
            reason = "near_duplicate"
        if reason is None:
            seen.add(key)
            if index is not None:
                index.add(grams)
                owners.append(chain)
        reasons.append(reason)
    return reasons


def apply(evolved: list, existing: Sequence[str], rules: Hygiene, existing_ids: Sequence[str] | None = None) -> list:
    """Set the status of every still-``kept`` evolved prompt to its drop reason, if any (chains are
    the evolved prompts' ``parent_id``; ``existing_ids`` the existing prompts' ids)."""
    kept = [e for e in evolved if e.status == "kept"]
    reasons = screen([e.prompt for e in kept], existing, rules, [e.parent_id for e in kept], existing_ids)
    for e, reason in zip(kept, reasons):
        if reason is not None:
            e.status = reason
    return evolved
