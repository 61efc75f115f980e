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


class SeededSampling(LogitsProcessor):
    """A logits processor that turns greedy decoding into sampling with one random stream per row.

    Each row adds Gumbel noise drawn from its own generator to its temperature-scaled,
    top-p-filtered scores; the argmax is then an exact sample from that distribution
    (the Gumbel-max trick). Row ``r``'s ``k``-th token uses its generator's ``k``-th draw,
    whatever else is in the batch.
    """

    def __init__(self, row_seeds: list[int], temperature: float, top_p: float) -> None:
        if temperature <= 0:
            raise ValueError("SeededSampling needs temperature > 0 (temperature 0 is greedy decoding)")
        self.row_seeds, self.temperature, self.top_p = list(row_seeds), float(temperature), float(top_p)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.row_seeds):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.row_seeds)} seeds")
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.row_seeds]
        scores = top_p_mask(scores.float() / self.temperature, self.top_p)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        tiny = torch.finfo(uniform.dtype).tiny
        return scores - torch.log(-torch.log(uniform.clamp_min(tiny)))
