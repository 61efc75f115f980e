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
    from eva_plugin.runtime import Lazy
    from eva_plugin.sharding import Shards

    llm = Lazy(lambda: TransformersBackend(str(models["policy"])))
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


def test_plugins_written_before_seeds_and_device_still_work(models, write_recipe):
    """A third-party backend whose ``generate`` takes no ``seeds`` and whose factory takes no
    ``device`` keeps working (one process: nothing to split)."""
    from accelerate import PartialState

    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe
    from eva_plugin.sharding import Shards, accepts
    from eva_plugin.sharding import generate as shared_generate

    class OldBackend:
        def __init__(self, model_path: str, batch_size: int = 8, dtype=None, trust_remote_code=False):
            self.inner = TransformersBackend(model_path, batch_size=batch_size)

        def generate(self, conversations, n, params):
            return self.inner.generate(conversations, n, params)

    assert not accepts(OldBackend, "device") and not accepts(OldBackend(str(models["policy"])).generate, "seeds")
    gens = shared_generate(Shards(PartialState()), OldBackend(str(models["policy"])), [conv("hi")], 2,
                           SamplingParams(max_new_tokens=4))
    assert len(gens.texts[0]) == 2
    loop = EvaLoop(load_recipe(["--config", str(write_recipe())]))
    facts = loop.run_facts
    assert "device" not in facts.device_options(OldBackend, {"batch_size": 2})
    assert facts.device_options(TransformersBackend, {})["device"] == str(loop.state.device)
    assert facts.device_options(TransformersBackend, {"device": "cpu:0"})["device"] == "cpu:0"  # the recipe wins
