"""Soft SPPO (`eva.loss: sppo`): the trainer's loss equals the formula; a round trains on it."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, load_from_disk
from trl import DPOConfig

from eva_plugin.modeling import load_causal_lm, load_tokenizer
from eva_plugin.solver.losses import loss_knobs, pair_columns, round_config, trainer_class, trainer_kwargs
from eva_plugin.solver.sppo import SoftSPPOTrainer
from eva_plugin.solver.training import round_arguments

BETA = 0.5  # large enough that the targets (P − ½)/β stay near the tiny model's log-ratios


def sequence_logps(model, batch):
    """Σ log p over the completion tokens, computed directly from the logits."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logps * mask[:, 1:]).sum(1)


def test_soft_sppo_loss_matches_the_formula(models, tmp_path):
    policy = str(models["policy"])
    rows = [{"prompt": [{"role": "user", "content": f"write a poem {i}"}],
             "chosen": [{"role": "assistant", "content": "the sea is blue " * (i + 1)}],
             "rejected": [{"role": "assistant", "content": "no"}],
             "chosen_probability": 0.9 - 0.1 * i, "rejected_probability": 0.2 + 0.05 * i} for i in range(4)]
    base = DPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, report_to=[],
                     gradient_checkpointing=False)
    knobs = loss_knobs("sppo", {"beta": BETA})
    model, ref = load_causal_lm(policy), load_causal_lm(policy)
    with torch.no_grad():  # make the policy differ from the reference
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    cls = trainer_class("sppo")
    assert cls is SoftSPPOTrainer
    trainer = cls(model=model, ref_model=ref, args=round_arguments(round_config(base, "sppo", knobs), tmp_path),
                  train_dataset=Dataset.from_list(rows).select_columns(pair_columns("sppo")),
                  processing_class=load_tokenizer(policy), **trainer_kwargs("sppo", knobs))
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["chosen_probability"].tolist()) == pytest.approx([0.6, 0.7, 0.8, 0.9])  # collated
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
        ratios = sequence_logps(trainer.model, batch) - sequence_logps(ref, batch)
    chosen, rejected = ratios.chunk(2)
    p_w, p_l = batch["chosen_probability"], batch["rejected_probability"]
    expected = (((chosen - (p_w - 0.5) / BETA) ** 2 + (rejected - (p_l - 0.5) / BETA) ** 2) / 2).mean()
    assert loss == pytest.approx(float(expected), rel=1e-4)
    # with P = 1 / 0 it is TRL's sppo_hard: targets ±1/(2β)
    hard = {**batch, "chosen_probability": torch.ones(4), "rejected_probability": torch.zeros(4)}
    with torch.no_grad():
        soft_as_hard = float(trainer.compute_loss(trainer.model, hard))
    expected_hard = (((chosen - 0.5 / BETA) ** 2 + (rejected + 0.5 / BETA) ** 2) / 2).mean()
    assert soft_as_hard == pytest.approx(float(expected_hard), rel=1e-4)

def test_a_round_trains_with_soft_sppo(write_recipe):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "loss": "sppo"}))])
    run(recipe)
    out = recipe.output_dir / "iter_1"
    pairs = load_from_disk(str(out / "pairs" / "data"))
    assert {"chosen_probability", "rejected_probability"} <= set(pairs.column_names)
    assert all(c > r for c, r in zip(pairs["chosen_probability"], pairs["rejected_probability"]))
    m = json.loads((out / "policy" / "manifest.json").read_text())
    assert m["loss"] == "sppo" and m["steps"] >= 1 and m["knobs"]["beta"] == 0.1  # the recipe's own beta
