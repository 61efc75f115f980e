"""Shared fixtures: tiny random models with an offline tokenizer, a prompt file, a recipe writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

from eva_plugin.testing import (  # noqa: E402
    make_tiny_encoder,
    make_tiny_pairrm,
    make_tiny_policy,
    make_tiny_reward_model,
)

TOPICS = ["the sea", "a python function", "the moon", "remote work", "climate policy", "a french sentence",
          "fibonacci numbers", "the sky", "a short poem", "language learning", "energy", "an equation"]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "policy": make_tiny_policy(root / "policy"),
        "reward": make_tiny_reward_model(root / "reward"),
        "encoder": make_tiny_encoder(root / "encoder"),
        "pairrm": make_tiny_pairrm(root / "pairrm"),
    }


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    with open(path, "w") as fh:
        for i, topic in enumerate(TOPICS):
            fh.write(json.dumps({"prompt": f"write {i + 1} sentences about {topic}", "category": "writing"}) + "\n")
    return path


@pytest.fixture(scope="session")
def recipe_writer(models, prompts_file):
    """``recipe_writer(folder)``: the ``write_recipe`` of a folder, for fixtures that outlive one test
    (a module-scoped run built in a ``tmp_path_factory`` folder)."""

    def writer(folder: Path):
        return _recipe_writer(folder, models, prompts_file)

    return writer


@pytest.fixture
def write_recipe(tmp_path, recipe_writer):
    """Write a small EVA recipe (Handbook layout + ``creator``/``eva``) in ``tmp_path``; keyword overrides merge in."""
    return recipe_writer(tmp_path)


def _recipe_writer(folder: Path, models: dict[str, Path], prompts_file: Path):
    def write(name: str = "recipe.yaml", eva: dict | None = None, **top) -> Path:
        recipe = {
            "model_name_or_path": str(models["policy"]),
            "torch_dtype": None,
            "dataset_mixture": {"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}], "seed": 0},
            "bf16": False,
            "beta": 0.1,
            "learning_rate": 1.0e-3,
            "max_length": 512,
            "per_device_train_batch_size": 4,
            "num_train_epochs": 1,
            "gradient_checkpointing": False,
            "logging_steps": 1,
            "report_to": "none",
            "output_dir": str(folder / "out"),
            "seed": 42,
            "creator": "eva",
            "eva": {
                "iterations": 2,
                "num_samples": 4,
                "solver_samples": 4,
                "num_evolutions": 2,
                "reward_model": str(models["reward"]),
                "generation": {"max_new_tokens": 12, "batch_size": 8},
                "evolver_generation": {"max_new_tokens": 16, "batch_size": 8},
                # a random tiny model almost never ends on its own: keep its cut-off rewrites
                "evolver_drop_truncated": False,
                **(eva or {}),
            },
        }
        recipe.update(top)
        path = folder / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write
