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


def test_top_p_at_or_below_zero_still_keeps_the_top_token():
    logits = torch.tensor([[-1.0, 5.0, 0.5]])
    assert torch.isfinite(top_p_mask(logits, 0.0)).tolist() == [[False, True, False]]
    picks = SeededSampling([1, 2, 3], 1.0, 0.0)(None, logits.repeat(3, 1)).argmax(-1)
    assert picks.tolist() == [1, 1, 1]


def test_each_step_draws_new_noise_from_the_same_stream():
    logits = torch.zeros(200, 30)  # uniform: the pick is decided by the noise alone
    sampler = SeededSampling(list(range(200)), 1.0, 1.0)
    first, second = sampler(None, logits).argmax(-1), sampler(None, logits).argmax(-1)
    assert (first != second).float().mean() > 0.8  # a new draw per step, not the same noise again
    replay = SeededSampling(list(range(200)), 1.0, 1.0)
    assert torch.equal(replay(None, logits).argmax(-1), first)
    assert torch.equal(replay(None, logits).argmax(-1), second)


def test_an_instruction_sent_again_in_a_later_call_is_sampled_afresh(models):
    """A failed rewrite retried with the same mutation must not come back word for word."""
    from accelerate import PartialState

    from eva_plugin.generation.completions import Completions
    from eva_plugin.runtime import OnDemand
    from eva_plugin.sharding import Shards

    llm = OnDemand(lambda: TransformersBackend(str(models["policy"])))
    complete = Completions(llm, SamplingParams(temperature=0.9, top_p=1.0, max_new_tokens=12, seed=5),
                            Shards(PartialState()))
    (first,), _ = complete(["rewrite: the sky is blue"])
    (again,), _ = complete(["rewrite: the sky is blue"])
    assert first != again and complete.calls == 2


def test_top_p_out_of_range_is_refused_at_parse_time(write_recipe):
    import pytest

    from eva_plugin.config import RecipeError
    from eva_plugin.recipe import load_recipe

    path = write_recipe(eva={"evolver_generation": {"top_p": 0}})
    with pytest.raises(RecipeError, match=r"eva.evolver_generation.top_p must be in \(0, 1\]"):
        load_recipe(["--config", str(path)])


def test_the_run_builds_a_backend_with_its_own_device_seed_and_generation_settings(models, write_recipe):
    """What the run owns reaches the backend through one ``ModelContext``: this process's device, the
    block's batching and sampling, the run seed; the recipe's ``options`` arrive parsed."""
    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe

    loop = EvaLoop(load_recipe(["--config", str(write_recipe(eva={"generation": {
        "max_new_tokens": 4, "batch_size": 3, "batch_tokens": 999, "sampling": "native"}}))]))
    facts = loop.run_facts
    context = facts.model_context(facts.eva.generation, str(models["policy"]))
    assert (context.device, context.batch_size, context.batch_tokens, context.sampling, context.seed) == \
        (str(loop.state.device), 3, 999, "native", facts.seed)
    backend = facts.backend(str(models["policy"]), facts.eva.generation)
    assert isinstance(backend, TransformersBackend)
    assert (backend.batch_size, backend.batch_tokens, backend.sampling, backend.device) == (3, 999, "native", "cpu")
    backend.close()


def test_hashed_uniforms_are_uniform_and_uncorrelated_across_rows_steps_and_tokens():
    from eva_plugin.generation.seeding import hashed_uniforms

    rows, vocab = 64, 4096
    seeds = torch.tensor([sample_seed(prompt_seeds(0, [conv("x")])[0], j) for j in range(rows)])
    u = torch.stack([hashed_uniforms(seeds, step, torch.arange(vocab)) for step in range(4)])  # [step, row, tok]
    assert u.min() > 0 and u.max() < 1
    flat = u.flatten().double()
    counts = torch.histc(flat, bins=64, min=0, max=1)
    expected = flat.numel() / 64
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 63 + 6 * (2 * 63) ** 0.5, chi2  # 63 degrees of freedom, ~6 standard deviations
    assert abs(flat.mean().item() - 0.5) < 1e-3 and abs(flat.var().item() - 1 / 12) < 1e-3

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()

    bound = 5 / (u[0].numel() ** 0.5)  # 5 standard errors
    assert abs(corr(u[0, :, 1:], u[0, :, :-1])) < bound  # neighbouring tokens
    assert abs(corr(u[0, 1:], u[0, :-1])) < bound  # neighbouring rows (seeds of samples 0, 1, ...)
    assert abs(corr(u[1], u[0])) < bound and abs(corr(u[3], u[2])) < bound  # consecutive steps
    consecutive = hashed_uniforms(torch.arange(rows), 0, torch.arange(vocab))  # seeds 0, 1, 2, ...
    assert abs(corr(consecutive[1:], consecutive[:-1])) < bound
    # the same (seed, step, token) always gives the same draw, alone or in a block of tokens
    picked = torch.tensor([[5, 4000, 17]] * rows)
    assert torch.equal(hashed_uniforms(seeds, 2, picked), u[2][:, [5, 4000, 17]])


def test_gumbel_max_over_the_whole_vocabulary_follows_the_softmax():
    logits = torch.tensor([1.5, 0.0, -0.5, 0.7, 0.2, -2.0, 1.0])
    draws = 40000
    sampler = SeededSampling(list(range(draws)), 1.3, 1.0)
    for _ in range(2):  # two steps: each is a fresh, exact sample
        picks = sampler(None, logits.repeat(draws, 1)).argmax(-1)
        freq = np.bincount(picks.numpy(), minlength=len(logits)) / draws
        expected = (logits / 1.3).softmax(-1).numpy()
        assert np.abs(freq - expected).max() < 4 * np.sqrt(expected * (1 - expected) / draws).max()


class GenerateSpy:
    """Counts the model's ``generate`` calls and their padded (rows, prompt width)."""

    def __init__(self, model) -> None:
        self.real, self.calls = model.generate, []

    def __call__(self, **kwargs):
        self.calls.append(tuple(kwargs["input_ids"].shape))
        return self.real(**kwargs)


def test_generation_batches_by_a_token_budget_with_the_same_samples(models):
    convs = [conv(f"tell me about {i}" + " and more" * (i % 5)) for i in range(9)]
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, seed=2)
    n, budget = 3, 200
    budgeted = TransformersBackend(str(models["policy"]), batch_size=64, batch_tokens=budget)
    spy = budgeted.model.generate = GenerateSpy(budgeted.model)
    together = budgeted.generate(convs, n, params)
    assert 1 < len(spy.calls) < len(convs)  # the budget, not batch_size, split the prompts
    assert sum(rows for rows, _ in spy.calls) == n * len(convs)
    assert all(rows * (width + params.max_new_tokens) <= budget for rows, width in spy.calls)
    one_at_a_time = TransformersBackend(str(models["policy"]), batch_size=1, batch_tokens=10**6)
    alone = one_at_a_time.generate(convs, n, params)
    assert alone.texts == together.texts and alone.finished == together.finished
    capped = TransformersBackend(str(models["policy"]), batch_size=2, batch_tokens=10**6)
    capped.model.generate = spy = GenerateSpy(capped.model)
    assert capped.generate(convs, n, params).texts == together.texts
    assert [rows for rows, _ in spy.calls] == [6, 6, 6, 6, 3]  # batch_size caps prompts when it binds first
    tiny = TransformersBackend(str(models["policy"]), batch_tokens=1)
    tiny.model.generate = spy = GenerateSpy(tiny.model)
    assert tiny.generate(convs[:3], n, params).texts == together.texts[:3]
    assert len(spy.calls) == 3  # a prompt over the budget gets a call of its own


def test_native_sampling_is_the_backends_own_and_seeded_per_call(models):
    import pytest

    convs = [conv(f"say something about {i}") for i in range(3)]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=4)
    native = TransformersBackend(str(models["policy"]), sampling="native")
    native.model.generate = spy = GenerateSpy(native.model)
    first = native.generate(convs, 2, params)
    assert first.texts == native.generate(convs, 2, params).texts  # torch.manual_seed(params.seed) per call
    assert all(len(texts) == 2 for texts in first.texts) and len(spy.calls) == 2
    seeded = TransformersBackend(str(models["policy"])).generate(convs, 2, params)
    assert seeded.texts != first.texts  # a different random stream
    with pytest.raises(ValueError, match="sampling must be one of"):
        TransformersBackend(str(models["policy"]), sampling="fast")


def test_recipe_sampling_and_token_budget_reach_the_backend(models, write_recipe):
    import pytest

    from eva_plugin.config import RecipeError
    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe

    with pytest.raises(RecipeError, match="eva.generation.sampling must be seeded or native"):
        load_recipe(["--config", str(write_recipe(eva={"generation": {"sampling": "fast"}}))])
    recipe = load_recipe(["--config", str(write_recipe(eva={"generation": {"sampling": "native",
                                                                           "batch_tokens": 4096}}))])
    loop = EvaLoop(recipe)
    backend = loop.run_facts.backend(str(models["policy"]), recipe.eva.generation)
    assert (backend.sampling, backend.batch_tokens) == ("native", 4096)
