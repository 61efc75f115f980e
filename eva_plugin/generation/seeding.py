"""Per-prompt sampling seeds and a batch-invariant sampler for ``transformers.generate``.

A response's random draws depend on the run seed, its prompt, which occurrence of that
prompt it answers, and its sample index only — not on batch size, prompt order or how
prompts are split across processes. Given the same logits, a run on N processes samples
exactly what a run on one does (tested on CPU in fp32). On a GPU in bf16, different batch
shapes change logits in the last bits, so an occasional token — and the rest of that
response — can differ; the samples stay equally distributed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import torch
from transformers import LogitsProcessor

SEED_BITS = 31  # what every backend accepts (vLLM, OpenAI-compatible servers, torch)


def derive_seed(*parts: object) -> int:
    """A seed from any parts (a base seed, a prompt, a call counter...)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (1 << SEED_BITS)


def prompt_seeds(base: int, conversations: list) -> list[int]:
    """One seed per prompt from ``base`` and the prompt's content; repeats of a prompt in the
    same list (multi-shot evolving asks k times) get different seeds by occurrence."""
    seen: Counter[str] = Counter()
    seeds = []
    for conversation in conversations:
        key = json.dumps(conversation, sort_keys=True, ensure_ascii=False)
        seeds.append(derive_seed(base, seen[key], key))
        seen[key] += 1
    return seeds


def sample_seed(prompt_seed: int, index: int) -> int:
    """The seed of sample ``index`` of a prompt (its own random stream in the sampler below)."""
    return derive_seed(prompt_seed, index)


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``scores`` with the tokens outside the smallest set of probability mass ``top_p`` at -inf."""
    if top_p >= 1.0:
        return scores
    probs = scores.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False  # the most likely token always stays (also for top_p <= 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


#: The hash works on int32 tensors with wrapping multiplication (two's complement, the same on
#: CPU and CUDA); right shifts are made logical by masking, so it is the unsigned 32-bit hash.
_GOLDEN = 0x9E3779B9
_STEP = 0x85EBCA77
_MIX1, _MIX2 = 0x7FEB352D, 0x846CA68B  # lowbias32 (C. Wellons' hash prospector)


def _i32(c: int) -> int:
    """An unsigned 32-bit constant as the int32 with the same bits."""
    return c - (1 << 32) if c >= 1 << 31 else c


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int32 bits."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32, a 32-bit integer finaliser with near-ideal avalanche, on int32 tensors."""
    x = x ^ _shr(x, 16)
    x = x * _i32(_MIX1)
    x = x ^ _shr(x, 15)
    x = x * _i32(_MIX2)
    return x ^ _shr(x, 16)


def hashed_uniforms(row_seeds: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float32 with 23 random bits (never 0 or 1), that depend only on
    (row seed, step, token id).

    ``row_seeds``: ``[rows]`` seeds below 2**31; ``tokens``: token ids, ``[vocab]`` (the same for
    every row) or ``[rows, k]``. One counter-based hash over the whole block, on its device: no
    generator state, so a row's draw is the same whatever else is in the batch.
    """
    seeds = row_seeds.to(torch.int32)
    key = _mix32(_mix32(seeds) ^ _mix32(torch.full_like(seeds, _i32((step * _STEP + 1) & 0xFFFFFFFF))))
    tokens = tokens.to(torch.int32)
    tokens = tokens if tokens.dim() == 2 else tokens[None, :]
    x = _mix32(key[:, None] + tokens * _i32(_GOLDEN))
    return (_shr(x, 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))  # exact in float32, so always < 1


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(uniform))


class SeededSampling(LogitsProcessor):
    """A logits processor that turns greedy decoding into sampling with one random stream per row.

    Each row adds Gumbel noise to its temperature-scaled, top-p-filtered scores; the argmax is
    then an exact sample from that distribution (the Gumbel-max trick). The noise of row ``r``
    at its ``k``-th token is a hash of (row seed, ``k``, token id) (``hashed_uniforms``), drawn
    for all rows in one vectorised op and only for the tokens inside the nucleus, so it does not
    depend on anything else in the batch.
    """

    def __init__(self, row_seeds: list[int], temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError("SeededSampling needs temperature > 0 (temperature 0 is greedy decoding)")
        self.row_seeds, self.temperature, self.top_p = list(row_seeds), float(temperature), float(top_p)
        self.step = 0  # tokens generated so far: the same for every row of one generate call
        self._seeds: torch.Tensor | None = None
        self._vocab: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.row_seeds):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.row_seeds)} seeds")
        if self._seeds is None or self._seeds.device != scores.device:
            self._seeds = torch.tensor(self.row_seeds, dtype=torch.int64, device=scores.device)
        step, self.step = self.step, self.step + 1
        scores = scores.float() / self.temperature
        if self.top_p >= 1.0:
            vocab = scores.shape[-1]
            if self._vocab is None or self._vocab.numel() != vocab or self._vocab.device != scores.device:
                self._vocab = torch.arange(vocab, dtype=torch.int64, device=scores.device)
            return scores + gumbel(hashed_uniforms(self._seeds, step, self._vocab))
        # the nucleus only: sort once, perturb its k best columns, every other token stays at -inf
        ordered, order = scores.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        keep = (probs.cumsum(-1) - probs) < self.top_p
        keep[..., 0] = True  # the most likely token always stays (also for top_p <= 0)
        k = int(keep.sum(-1).max())
        tokens = order[:, :k]
        noisy = (ordered[:, :k] + gumbel(hashed_uniforms(self._seeds, step, tokens))).masked_fill(
            ~keep[:, :k], float("-inf"))
        return torch.full_like(scores, float("-inf")).scatter(-1, tokens, noisy)
