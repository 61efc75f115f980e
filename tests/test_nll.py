"""Length-normalised NLL (nll_alpha): the term the trainers add equals a direct computation."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig

from eva_plugin.modeling import load_causal_lm, load_tokenizer
from eva_plugin.solver.losses import loss_knobs, round_config, trainer_class, trainer_kwargs
from eva_plugin.solver.training import round_arguments

ALPHA = 0.5


def trainer_for(loss: str, policy, tmp_path, **loss_args):
    rows = [{"prompt": [{"role": "user", "content": f"write a poem {i}"}],
             "chosen": [{"role": "assistant", "content": "the sea is blue and wide " * (i + 1)}],  # unequal lengths
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)]
    base = DPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, report_to=[],
                     gradient_checkpointing=False)
    knobs = loss_knobs(loss, {"nll_alpha": ALPHA, **loss_args})
    kwargs = trainer_kwargs(loss, knobs)
    if loss == "dpo":
        kwargs["ref_model"] = load_causal_lm(str(policy))
    trainer = trainer_class(loss)(model=load_causal_lm(str(policy)), args=round_arguments(
        round_config(base, loss, knobs), tmp_path), train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(str(policy)), **kwargs)
    return trainer, next(iter(trainer.get_train_dataloader()))


def direct_nll(model, input_ids, attention_mask, target_mask, power: float = 1.0):
    """mean over sequences of −Σ log p(token) / #tokens^power, over the tokens marked in ``target_mask``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = target_mask[:, 1:].float()
    per_sequence = -(logps * mask).sum(1) / mask.sum(1) ** power
    token_mean = -(logps * mask).sum() / mask.sum()
    return per_sequence.mean(), token_mean


def loss_gap(trainer, batch):
    with torch.no_grad():
        trainer.nll_alpha = 0.0
        without = trainer.compute_loss(trainer.model, batch)
        trainer.nll_alpha = ALPHA
        with_nll = trainer.compute_loss(trainer.model, batch)
    return float(with_nll - without)


def test_dpo_nll_term_matches_a_direct_computation(models, tmp_path):
    trainer, batch = trainer_for("dpo", models["policy"], tmp_path)
    half = batch["input_ids"].shape[0] // 2  # TRL's batch is [chosen; rejected]
    with torch.no_grad():
        nll, token_mean = direct_nll(trainer.model, batch["input_ids"][:half], batch["attention_mask"][:half],
                                     batch["completion_mask"][:half])
    assert loss_gap(trainer, batch) == pytest.approx(ALPHA * float(nll), abs=1e-4)
    assert abs(float(nll) - float(token_mean)) > 1e-3  # not TRL's `sft` token mean
    mode = "train" if trainer.model.training else "eval"
    assert trainer._metrics[mode]["nll_per_token"] == [pytest.approx(float(nll), abs=1e-4)]  # logged once


def test_the_authors_rpo_term_at_per_device_batch_1(models, tmp_path):
    """``nll_length_power: 2`` is the EVA authors' RPO term (eva/trainer.py): the token-mean NLL of y+ over a
    micro-batch, divided by the micro-batch's mean chosen length; at one pair per device, Σ NLL / |y+|²."""
    trainer, batch = trainer_for("dpo", models["policy"], tmp_path, nll_length_power=2.0)
    half = batch["input_ids"].shape[0] // 2
    with torch.no_grad():
        squared, _ = direct_nll(trainer.model, batch["input_ids"][:half], batch["attention_mask"][:half],
                                batch["completion_mask"][:half], power=2.0)
        authors = []
        for i in range(half):  # one pair per micro-batch, as the authors' scripts train
            mask = batch["completion_mask"][i:i + 1]
            _, token_mean = direct_nll(trainer.model, batch["input_ids"][i:i + 1], batch["attention_mask"][i:i + 1],
                                       mask)
            authors.append(float(token_mean) / float(mask[:, 1:].sum()))
    assert float(squared) == pytest.approx(sum(authors) / half, rel=1e-5)
    assert loss_gap(trainer, batch) == pytest.approx(ALPHA * float(squared), abs=1e-5)


def test_simpo_nll_term_matches_a_direct_computation(models, tmp_path):
    trainer, batch = trainer_for("simpo", models["policy"], tmp_path)
    assert trainer.cpo_alpha == 0 and trainer.loss_type == "simpo"
    with torch.no_grad():
        nll, _ = direct_nll(trainer.model, batch["chosen_input_ids"], batch["chosen_attention_mask"],
                            batch["chosen_labels"] != -100)
    assert loss_gap(trainer, batch) == pytest.approx(ALPHA * float(nll), abs=1e-4)


def test_nll_alpha_trains_in_the_loop(write_recipe):
    import json

    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "loss_args": {"nll_alpha": 0.2}}))])
    run(recipe)
    m = json.loads((recipe.output_dir / "iter_1" / "policy" / "manifest.json").read_text())
    assert m["knobs"]["nll_alpha"] == 0.2 and m["steps"] >= 1
