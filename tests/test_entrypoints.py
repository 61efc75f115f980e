"""The user's commands as subprocesses: accelerate launch, ``eva run``, ``eva plugins``, a pip-installed plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import load_from_disk

from eva_plugin.stage_list import round_stages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(*cmd: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_accelerate_launch_runs_two_eva_iterations(write_recipe):
    path = write_recipe()
    proc = sh(str(BIN / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
              "-m", "eva_plugin.dpo", "--config", str(path))
    out = Path(yaml.safe_load(path.read_text())["output_dir"])
    timings = {}
    for t in (1, 2):
        for stage in round_stages("eva"):
            folder = out / f"iter_{t}" / stage
            manifest = json.loads((folder / "manifest.json").read_text())
            timings[f"iter_{t}/{stage}"] = manifest["seconds"]
            if stage == "policy":
                assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
            else:
                assert len(load_from_disk(str(folder / "data"))) == manifest["rows"] > 0
    assert "iter  scored" in proc.stdout  # the summary table
    print("\nstage seconds:", json.dumps(timings, indent=1))


def test_eva_run_without_creator_trains_one_plain_dpo_round(tmp_path, models):
    prefs = tmp_path / "prefs.jsonl"
    with open(prefs, "w") as fh:
        for i in range(8):
            fh.write(json.dumps({
                "chosen": [{"role": "user", "content": f"name a colour {i}"},
                           {"role": "assistant", "content": "blue, the colour of the sea"}],
                "rejected": [{"role": "user", "content": f"name a colour {i}"},
                             {"role": "assistant", "content": "no"}],
            }) + "\n")
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(models["policy"]), "torch_dtype": None,
        "dataset_mixture": {"datasets": [{"id": str(prefs), "columns": ["chosen", "rejected"]}],
                            "test_split_size": 2, "seed": 0},
        "bf16": True, "max_prompt_length": 64, "max_length": 128, "per_device_train_batch_size": 2,
        "max_steps": 2, "learning_rate": 1e-3, "eval_strategy": "steps", "eval_steps": 1, "report_to": "none",
        "push_to_hub": False, "output_dir": str(tmp_path / "dpo_out"), "gradient_checkpointing": False,
    }))
    sh(str(BIN / "eva"), "run", str(recipe))
    assert (tmp_path / "dpo_out" / "model.safetensors").exists()
    assert (tmp_path / "dpo_out" / "tokenizer.json").exists()
    assert not (tmp_path / "dpo_out" / "iter_1").exists()


def test_bad_recipe_is_one_line_on_stderr(write_recipe):
    path = write_recipe(eva={"proxy": "nope"})
    proc = subprocess.run([str(BIN / "eva"), "run", str(path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("eva: error: unknown eva.proxy 'nope'; known: a_avg")


def test_pip_installed_plugin_is_listed_and_used_by_name(tmp_path, write_recipe):
    target = tmp_path / "site"
    sh(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
       "--target", str(target), str(ROOT / "hooks" / "eva-proxy-example"))
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    listing = sh(str(BIN / "eva"), "plugins", env=env).stdout
    line = next(ln for ln in listing.splitlines() if "quantile_gap" in ln)
    assert "eva-proxy-example 0.1.0" in line
    assert "a_min" in listing and "built-in" in listing

    path = write_recipe(eva={"iterations": 1, "proxy": "quantile_gap"})
    sh(str(BIN / "eva"), "run", str(path), "--stop_after", "scores", env=env)
    out = Path(yaml.safe_load(path.read_text())["output_dir"]) / "iter_1"
    rewards = load_from_disk(str(out / "creator_rewards" / "data"))["rewards"]
    info = load_from_disk(str(out / "scores" / "data"))["info"]
    expected = [np.quantile(r, 0.9) - np.quantile(r, 0.1) for r in rewards]
    assert info == pytest.approx(expected)
    assert json.loads((out / "scores" / "manifest.json").read_text())["config"]["proxy"] == "quantile_gap"
