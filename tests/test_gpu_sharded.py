"""Sharded rounds and direct placement on CUDA (issue 22, items 4 and 5); skipped without a GPU.

What ``tests/test_sharded_training.py`` cannot run on CPU: a whole round under the repo's ``fsdp.yaml``
(FSDP2, FULL_STATE_DICT) and ``zero3.yaml`` (with DeepSpeed installed), each publishing a policy that loads
and whose manifest's reference checksum is the unsharded reference's; models loaded straight onto the
GPU (``device_map``) for sampling, scoring and training; a finished round giving its GPU memory back.
``make gpu-check`` runs them (``pytest -m gpu``); one GPU is enough (one process per config).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TURN = [{"role": "user", "content": "name a colour"}]


@pytest.fixture(autouse=True)
def gpu_process(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)


def _checksum(path) -> float:
    from transformers import AutoModelForCausalLM

    from eva_plugin.solver.training import parameter_checksum

    return parameter_checksum(AutoModelForCausalLM.from_pretrained(path))


def _one_round(write_recipe, config: str, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One plain round (``creator: none``) on one GPU under ``recipes/accelerate_configs/<config>.yaml``."""
    recipe = write_recipe(f"{config}.yaml", creator="none", output_dir=str(tmp_path / config),
                          eva={"iterations": 1, "prompts_per_iteration": 8})
    accelerate_config = ROOT / "recipes" / "accelerate_configs" / f"{config}.yaml"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(accelerate_config), "--num_processes", "1",
           "--main_process_port", "0", "--mixed_precision", "no", "-m", "eva_plugin.dpo", "--config", str(recipe)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return tmp_path / config / "iter_1" / "policy", proc


def _published_and_whole(policy: Path, initial: Path, proc: subprocess.CompletedProcess) -> None:
    from eva_plugin.solver.training import saved_weights_fault

    assert saved_weights_fault(policy) == ""
    manifest = json.loads((policy / "manifest.json").read_text())
    # reference: previous = π_0 in round 1; the checksum is over whole (gathered) parameters
    assert manifest["reference_checksum"] == pytest.approx(_checksum(initial), rel=1e-4)
    trained = _checksum(policy)
    assert math.isfinite(trained) and trained != pytest.approx(_checksum(initial), rel=1e-9)
    assert "the round's trainer is freed:" in proc.stdout + proc.stderr


def test_an_fsdp2_round_publishes_a_loadable_policy(write_recipe, models, tmp_path):
    policy, proc = _one_round(write_recipe, "fsdp", tmp_path)
    _published_and_whole(policy, Path(models["policy"]), proc)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs DeepSpeed")
def test_a_zero3_round_publishes_a_loadable_policy_and_a_gathered_reference_checksum(write_recipe, models, tmp_path):
    policy, proc = _one_round(write_recipe, "zero3", tmp_path)
    _published_and_whole(policy, Path(models["policy"]), proc)


def test_sampling_scoring_and_training_models_load_straight_onto_the_gpu(models, monkeypatch):
    """Each model comes out of ``from_pretrained`` already on this process's GPU (``device_map``; before
    the loaders' own ``.to(device)``, which is then a no-op), so its weights never fill host memory."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from eva_plugin.generation.transformers_backend import TransformersBackend
    from eva_plugin.modeling import load_causal_lm
    from eva_plugin.rewards.sequence_classification import SequenceClassificationReward

    loaded: list[tuple[object, str]] = []
    for cls in (AutoModelForCausalLM, AutoModelForSequenceClassification):
        def spy(*args, _original=cls.from_pretrained, **kwargs):
            model = _original(*args, **kwargs)
            loaded.append((kwargs.get("device_map"), next(model.parameters()).device.type))
            return model

        monkeypatch.setattr(cls, "from_pretrained", spy)
    index = torch.cuda.current_device()
    backend = TransformersBackend(str(models["policy"]), batch_size=2, device=f"cuda:{index}")
    reward = SequenceClassificationReward(str(models["reward"]), device=f"cuda:{index}")
    load_causal_lm(str(models["policy"]), device=f"cuda:{index}", training=True)  # DDP: no FSDP, no ZeRO-3
    assert loaded == [({"": index}, "cuda")] * 3
    backend.close()
    reward.close()


def test_a_round_on_cuda_gives_its_memory_back(models, tmp_path):
    """A device-mapped policy trains (the trainer takes it as it is, not as model parallel), the policy is
    published, and once ``train_round`` returns its models are gone and the GPU memory is back."""
    from datasets import Dataset
    from trl import DPOConfig, ModelConfig

    from eva_plugin.solver.training import saved_weights_fault, train_round

    pairs = Dataset.from_list([{"prompt": TURN, "chosen": [{"role": "assistant", "content": f"blue {i}"}],
                                "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)])
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    seen: dict = {}

    def attach(trainer) -> None:
        assert not trainer.is_model_parallel
        seen.update(model=weakref.ref(trainer.model), reference=weakref.ref(trainer.ref_model))

    args = DPOConfig(output_dir="unused", report_to="none", bf16=False, max_steps=2, per_device_train_batch_size=2,
                     disable_tqdm=True)
    train_round(pairs, policy_path=str(models["policy"]), reference_path=str(models["policy"]), training=args,
                model_args=ModelConfig(model_name_or_path=str(models["policy"])), save_dir=tmp_path / "policy",
                attach=attach)
    assert saved_weights_fault(tmp_path / "policy") == ""
    assert all(ref() is None for ref in seen.values())
    held = torch.cuda.max_memory_allocated() - before  # the round's models, optimizer and activations
    assert held > 0 and torch.cuda.memory_allocated() - before <= 0.05 * held
