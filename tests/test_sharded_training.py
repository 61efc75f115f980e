"""Sharded training that saves, frees its engines and loads models once per rank (issue 22, items 4 and 5).

What runs on CPU runs here, with real components: a saved checkpoint is checked before it is published
(``saved_weights_fault``), a round's trainer lets go of its models, a model loads straight onto its GPU
only where that is allowed (``direct_placement``), the reference checksum is taken over whole parameters
of a model FSDP2 sharded over two gloo processes, the repo's ``fsdp.yaml`` makes accelerate save the whole
weights, and stage fingerprints hash local folders on the main process only. accelerate 1.16 turns FSDP
on only for GPU-type launches, so a whole round under FSDP2 or ZeRO-3 is in ``tests/test_gpu_sharded.py``.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from eva_plugin.errors import TrainingError
from eva_plugin.modeling import direct_placement, load_causal_lm, load_tokenizer
from eva_plugin.solver.training import free_trainer, saved_weights_fault

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TURN = [{"role": "user", "content": "name a colour"}]


def _pairs(n: int = 4):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": TURN, "chosen": [{"role": "assistant", "content": f"blue {i}"}],
                               "rejected": [{"role": "assistant", "content": "no"}]} for i in range(n)])


# --- a saved policy is checked before it is published ---------------------------------------------------

def test_saved_weights_fault_reads_real_checkpoints(models, tmp_path):
    """A whole checkpoint passes; no weight file, a missing or reshaped tensor, a truncated file and an
    index naming a shard that is not there are each refused in words."""
    policy = Path(models["policy"])
    assert saved_weights_fault(policy) == ""

    def copy_of(name: str) -> Path:
        return Path(shutil.copytree(policy, tmp_path / name))

    empty = copy_of("empty")  # what save_model writes under FSDP with SHARDED_STATE_DICT: nothing but the rest
    (empty / "model.safetensors").unlink()
    assert saved_weights_fault(empty) == "the save wrote no weight file"

    missing, reshaped = copy_of("missing"), copy_of("reshaped")
    weights = load_file(policy / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    save_file({k: v for k, v in weights.items() if k != name}, missing / "model.safetensors", {"format": "pt"})
    assert saved_weights_fault(missing) == f"1 weight tensor(s) missing (first: {name})"
    save_file({**weights, name: weights[name][:, :3].contiguous()}, reshaped / "model.safetensors", {"format": "pt"})
    assert saved_weights_fault(reshaped).startswith("1 weight tensor(s) of another shape than config.json's")

    truncated = copy_of("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors is truncated" in saved_weights_fault(truncated)

    sharded = tmp_path / "sharded"
    load_causal_lm(str(policy)).save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and saved_weights_fault(sharded) == ""
    shards[-1].unlink()
    assert saved_weights_fault(sharded) == (f"model.safetensors.index.json names 1 shard(s) that are not there "
                                            f"(first: {shards[-1].name})")


# --- a round's trainer lets go of its models ----------------------------------------------------------

def _trainer(models, tmp_path):
    from trl import DPOConfig, DPOTrainer

    model = load_causal_lm(str(models["policy"]))
    args = DPOConfig(output_dir=str(tmp_path / "trainer"), report_to="none", bf16=False, use_cpu=True, max_steps=1,
                     per_device_train_batch_size=2, disable_tqdm=True, save_strategy="no")
    return DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=_pairs(2),
                      processing_class=load_tokenizer(str(models["policy"])))


def test_free_trainer_leaves_no_model_behind_a_held_trainer(models, tmp_path):
    """Whoever still holds a trained trainer (a tracker's callback, an exception's traceback) holds none
    of its models, optimizer or accelerator state once it is freed."""
    trainer = _trainer(models, tmp_path)
    trainer.train()
    held = {"model": weakref.ref(trainer.model), "reference": weakref.ref(trainer.ref_model),
            "optimizer": weakref.ref(trainer.optimizer)}
    gc.collect()
    assert all(ref() is not None for ref in held.values())  # the trainer alone keeps them
    free_trainer(trainer)
    gc.collect()
    assert {name: ref() is None for name, ref in held.items()} == dict.fromkeys(held, True)
    assert trainer.accelerator._models == [] and trainer.accelerator._optimizers == []


def test_a_refused_round_frees_its_models_while_the_error_is_held(models, tmp_path):
    """``train_round`` frees the trainer on every way out: a round refused after training (an update of
    1e39 leaves weights that are not finite) leaves no model alive, though its exception, whose traceback
    holds the round's frames, is still held."""
    from trl import DPOConfig, ModelConfig

    from eva_plugin.solver.training import train_round

    seen: dict[str, weakref.ref] = {}

    def attach(trainer) -> None:
        seen.update(model=weakref.ref(trainer.model), reference=weakref.ref(trainer.ref_model))

    args = DPOConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True, max_steps=1,
                     per_device_train_batch_size=2, disable_tqdm=True, learning_rate=1.0e39, max_grad_norm=0.0)
    with pytest.raises(TrainingError, match="NaN or infinite") as caught:
        train_round(_pairs(2), policy_path=str(models["policy"]), reference_path=str(models["policy"]),
                    training=args, model_args=ModelConfig(model_name_or_path=str(models["policy"])),
                    save_dir=tmp_path / "policy", attach=attach)
    gc.collect()
    assert caught.value.__traceback__ is not None and seen
    assert {name: ref() is None for name, ref in seen.items()} == {"model": True, "reference": True}
    assert not (tmp_path / "policy" / "model.safetensors").exists()


# --- models load straight onto their GPU where that is allowed -------------------------------------------

def test_direct_placement_puts_a_model_on_its_gpu_unless_a_trainer_shards_it(models, monkeypatch):
    from transformers.integrations import deepspeed as hf_deepspeed

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert direct_placement("cpu") == {} and direct_placement("cpu", training=True) == {}
    assert direct_placement("cuda:3") == {"device_map": {"": 3}}
    assert direct_placement("cuda:3", training=True) == {"device_map": {"": 3}}  # DDP: the trainer keeps it there
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config
    assert direct_placement("cuda:3", training=True) == {}  # FSDP shards a host copy
    assert direct_placement("cuda:3") == {"device_map": {"": 3}}  # a sampling or reward model: whole, on its GPU
    monkeypatch.delenv("ACCELERATE_USE_FSDP")

    class ZeRO3Config:  # the object transformers consults (DeepSpeed is not installed here)
        def is_zero3(self) -> bool:
            return True

    config = ZeRO3Config()  # transformers keeps only a weak reference
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        assert direct_placement("cuda:3") == {}  # zero.Init partitions while loading, and refuses a device map
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
    # on CPU nothing changes: the model loads as before, with no device map
    assert getattr(load_causal_lm(str(models["policy"]), device="cpu"), "hf_device_map", None) is None


# --- two gloo processes: FSDP2 shards, the repo's fsdp.yaml, fingerprints hashed once -------------------

def launch(*args: str, config: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two CPU processes under ``accelerate launch`` (with ``config``: that accelerate config's environment)."""
    where = ["--config_file", str(config)] if config else ["--multi_gpu", "--num_machines", "1"]
    cmd = [str(BIN / "accelerate"), "launch", *where, "--num_processes", "2", "--main_process_port", "0",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


FSDP2 = """
import json, sys
import torch
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from eva_plugin.modeling import load_causal_lm
from eva_plugin.solver.training import nonfinite_parameters, parameter_checksum

state = PartialState(cpu=True)  # gloo: accelerate itself turns FSDP on only for GPU-type launches
plugin = FullyShardedDataParallelPlugin()  # what accelerate builds from the launcher's environment
model = load_causal_lm(sys.argv[1], device="cpu")
whole = parameter_checksum(model)
mesh = init_device_mesh("cpu", (state.num_processes,))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
name, param = next((n, p) for n, p in model.named_parameters() if n.endswith("down_proj.weight"))
sharded = parameter_checksum(model)
local = sum(float(p.to_local().double().abs().sum()) for p in model.parameters())
if state.process_index == 1:
    with torch.no_grad():
        param.to_local()[0, 0] = float("nan")
report = {"fsdp_version": plugin.fsdp_version, "state_dict_type": str(plugin.state_dict_type),
          "whole": whole, "sharded": sharded, "local": local, "nonfinite": nonfinite_parameters(model),
          "dtensor": type(param).__name__}
with open(f"{sys.argv[2]}/rank{state.process_index}.json", "w") as fh:
    json.dump(report, fh)
state.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_shards_checksum_whole_and_the_repo_config_saves_full_weights(models, tmp_path):
    """Under the repo's fsdp.yaml, accelerate's FSDP plugin is FSDP2 with FULL_STATE_DICT (transformers'
    ``Trainer.save_model`` writes weights only when the type says FULL_STATE_DICT). The reference
    checksum of a model FSDP2 sharded over two gloo processes is the unsharded model's on both ranks (not
    the sum of one shard), and a NaN in one rank's shard is found there."""
    script = tmp_path / "fsdp2.py"
    script.write_text(FSDP2)
    launch(str(script), str(models["policy"]), str(tmp_path), config=ROOT / "recipes/accelerate_configs/fsdp.yaml")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in ranks:
        assert report["fsdp_version"] == 2 and "FULL_STATE_DICT" in report["state_dict_type"]
        assert report["dtensor"] == "DTensor"
        assert report["sharded"] == pytest.approx(report["whole"], rel=1e-9)
        assert report["local"] < 0.9 * report["whole"]  # one shard's sum is not the checksum
    assert ranks[0]["nonfinite"] == [] and ranks[1]["nonfinite"] == ["model.layers.0.mlp.down_proj.weight"]


FINGERPRINTS = """
import json, os, sys
rank = int(os.environ["RANK"])
os.environ["EVA_PLUGIN_CACHE"] = f"{sys.argv[2]}/cache-rank{rank}"  # where this rank's content hashes go

from eva_plugin.errors import StopAfterStage
from eva_plugin.loop import EvaLoop
from eva_plugin.recipe import load_recipe

loop = EvaLoop(load_recipe(["--config", sys.argv[1]]), stop_after="iter_1/creator_samples", log=lambda line: None)
try:
    loop.run()
except StopAfterStage:
    pass
fingerprints = {f"iter_{r.iteration}/{name}": m.get("fingerprint")
                for r in loop.reports for name, m in r.manifests.items()}
with open(f"{sys.argv[2]}/fingerprints-rank{rank}.json", "w") as fh:
    json.dump(fingerprints, fh)
loop.state.destroy_process_group()
"""


@pytest.mark.slow
def test_local_folders_are_hashed_on_the_main_process_only(models, write_recipe, prompts_file, tmp_path):
    """Two processes run to iter_1/creator_samples, whose fingerprints hold the content hashes of the
    prompt file and the policy's folder: each rank keeps its own hash cache, and only rank 0's was ever
    written; both ranks hold the same fingerprints, and the policy's weights hash is the file's sha256."""
    recipe = write_recipe(eva={"prompts_per_iteration": 4, "num_samples": 2,
                               "generation": {"max_new_tokens": 4, "batch_size": 4}})
    script = tmp_path / "fingerprints.py"
    script.write_text(FINGERPRINTS)
    launch(str(script), str(recipe), str(tmp_path))
    ranks = [json.loads((tmp_path / f"fingerprints-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and "iter_1/creator_samples" in ranks[0]
    assert not (tmp_path / "cache-rank1").exists(), "rank 1 hashed local files"
    hashed = json.loads((tmp_path / "cache-rank0" / "hashes.json").read_text())
    weights = Path(models["policy"]).resolve() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert [v for k, v in hashed.items() if k.startswith(f"{weights}|")] == [digest]
    assert any(k.startswith(f"{Path(prompts_file).resolve()}|") for k in hashed)
    manifest = json.loads((Path(yaml.safe_load(recipe.read_text())["output_dir"]) / "iter_1" / "creator_samples"
                           / "manifest.json").read_text())
    assert manifest["config"]["policy"].startswith(f"{models['policy']}@sha256:")
