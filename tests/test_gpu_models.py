"""Every model kind on CUDA in bf16 (the tiny models of ``eva_plugin.testing``); skipped without a GPU.

Each model must sit on the process's device and every tensor fed to it on ``model.device``
(a forward pre-hook checks each call).
"""

import json
import math

import pytest
import torch
from test_models import _spy_inputs

from eva_plugin.generation import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONVS = [[{"role": "user", "content": "write a poem"}], [{"role": "user", "content": "solve 2 x + 3 = 11"}]]
RESPONSES = [["a poem about waves", "no"], ["x = 4", "x = 4 because 2 x = 8", "x"]]


@pytest.fixture(autouse=True)
def gpu_process(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


def _checked(model) -> list:
    """Record every forward's tensor inputs, asserting they lie on the model's device."""
    seen: list = []
    _spy_inputs(model, seen)
    return seen


def _on_cuda_bf16(model, dtype=torch.bfloat16) -> None:
    assert model.device.type == "cuda"
    assert next(model.parameters()).dtype is dtype


def test_transformers_backend_samples_on_cuda_in_bf16(models):
    from eva_plugin.generation.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(models["policy"]), batch_size=2, dtype="bfloat16")
    _on_cuda_bf16(backend.model)
    seen = _checked(backend.model)
    gens = backend.generate(CONVS, 2, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, seed=1))
    assert [len(t) for t in gens.texts] == [2, 2]
    greedy = backend.generate(CONVS, 1, SamplingParams(temperature=0, max_new_tokens=6))
    assert [len(t) for t in greedy.texts] == [1, 1]
    assert seen and all(d.type == "cuda" for d in seen)
    backend.close()


@pytest.mark.parametrize("kind", ["sequence_classification", "embedding", "pairwise"])
def test_reward_models_score_on_cuda_in_bf16(models, kind):
    from eva_plugin import plugins

    path = {"sequence_classification": models["reward"], "embedding": models["encoder"],
            "pairwise": models["policy"]}[kind]
    rm = plugins.get("reward_models", kind)(str(path), dtype="bfloat16", batch_size=2)
    _on_cuda_bf16(rm.model)
    seen = _checked(rm.model)
    scores = rm.score(CONVS, RESPONSES)
    assert [len(s) for s in scores] == [2, 3]
    assert all(math.isfinite(x) for s in scores for x in s)
    assert seen and all(d.type == "cuda" for d in seen)
    rm.close()


def test_explicit_cpu_device_keeps_a_reward_model_on_cpu(models):
    from eva_plugin.rewards.pairwise import PairwisePreferenceReward

    rm = PairwisePreferenceReward(str(models["policy"]), device="cpu")
    assert rm.model.device.type == "cpu"
    seen = _checked(rm.model)
    rm.score(CONVS[:1], [["a", "b"]])
    assert seen and all(d.type == "cpu" for d in seen)


def test_a_dpo_round_on_cuda_in_bf16_reference_and_probe(write_recipe, monkeypatch):
    """One EVA iteration (sampling, reward, DPO) in bf16 on the GPU; the reference and its
    log-prob probe run on CUDA with their inputs there."""
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe
    from eva_plugin.solver import training

    probed: list = []
    real = training.sequence_logp

    def probe(model, *args):
        probed.append((model.device, next(model.parameters()).dtype))
        return real(model, *args)

    monkeypatch.setattr(training, "sequence_logp", probe)
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1}, torch_dtype="bfloat16",
                                                       bf16=True))])
    run(recipe)
    assert probed and probed[0][0].type == "cuda"
    assert probed[0][1] is torch.bfloat16
    stats = json.loads((recipe.output_dir / "iter_1" / "policy" / "manifest.json").read_text())
    assert math.isfinite(stats["reference_logp_probe"]) and math.isfinite(stats["train_loss"])
