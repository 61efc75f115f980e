"""Per-prompt seeds and the Gumbel-max sampler: exact sampling, independent of batching."""

from __future__ import annotations

import numpy as np
import torch

from eva_plugin.generation import SamplingParams
from eva_plugin.generation.seeding import SeededSampling, prompt_seeds, sample_seed, top_p_mask
from eva_plugin.generation.transformers_backend import TransformersBackend


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_prompt_seeds_depend_on_base_content_and_occurrence():
    convs = [conv("a"), conv("b"), conv("a")]
    seeds = prompt_seeds(7, convs)
    assert len(set(seeds)) == 3  # the repeated prompt gets a second, different seed
    assert prompt_seeds(7, convs) == seeds and prompt_seeds(8, convs) != seeds
    assert prompt_seeds(7, [conv("b")]) == [seeds[1]]  # alone or in a list: the same seed
    assert all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(seeds[0], 0) != sample_seed(seeds[0], 1)


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_mask(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_mask(logits, 0.01)).sum() == 1  # the top token always stays
    assert torch.equal(top_p_mask(logits, 1.0), logits)


def test_gumbel_max_draws_follow_the_tempered_top_p_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    temperature, top_p, draws = 0.8, 0.9, 20000
    sampler = SeededSampling(list(range(draws)), temperature, top_p)
    picks = sampler(None, logits.repeat(draws, 1)).argmax(-1)
    freq = np.bincount(picks.numpy(), minlength=5) / draws
    expected = top_p_mask((logits / temperature)[None], top_p).softmax(-1)[0].numpy()
    assert expected[-1] == 0 and freq[-1] == 0  # outside the nucleus: never drawn
    assert np.abs(freq - expected).max() < 0.015, (freq, expected)  # ~4 standard errors at n = 20000


def test_a_rows_draws_do_not_depend_on_the_other_rows():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    together = SeededSampling([11, 22, 33], 1.0, 1.0)(None, logits)
    alone = SeededSampling([22], 1.0, 1.0)(None, logits[1:2])
    assert torch.equal(together[1:2], alone)


def test_transformers_samples_do_not_depend_on_batch_order_or_company(models):
    convs = [conv(f"write {i} lines about topic {i * 7}" + " more" * (i % 4)) for i in range(7)]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=3)
    batched = TransformersBackend(str(models["policy"]), batch_size=4).generate(convs, 3, params)
    one_by_one = TransformersBackend(str(models["policy"]), batch_size=1)
    reversed_ = one_by_one.generate(convs[::-1], 3, params, seeds=prompt_seeds(3, convs)[::-1])
    assert reversed_.texts[::-1] == batched.texts
    odd = one_by_one.generate(convs[1::2], 3, params, seeds=prompt_seeds(3, convs)[1::2])
    assert odd.texts == batched.texts[1::2] and odd.finished == batched.finished[1::2]
    assert all(len(set(texts)) > 1 for texts in batched.texts)  # the n samples of a prompt differ
    other = TransformersBackend(str(models["policy"]), batch_size=4).generate(
        convs, 3, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=4))
    assert other.texts != batched.texts
