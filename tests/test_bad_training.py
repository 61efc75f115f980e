"""Training settings (issue 20, classes 1 and 2): every TRL training key and every number of the
``eva:`` block a user can get wrong is refused when the recipe is read, before any model loads; a
round whose training left weights that are not finite, or took no optimiser step, is never published.

The cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from catalogue import Case, Ctx, assert_case, edited, recipe

from eva_plugin.checks import TRAINING_RULES, check_generation_room, check_training
from eva_plugin.config import eva_arguments
from eva_plugin.errors import RecipeError, TrainingError
from eva_plugin.model_files import context_length
from eva_plugin.modeling import load_causal_lm
from eva_plugin.solver.training import nonfinite_parameters, unusable_round

INF, NAN = math.inf, math.nan
POLICY, PAIRS = "iter_1/policy", "iter_1/pairs"


def _not_published(ctx: Ctx) -> None:
    """The check: the round's pairs are kept, its policy is not there (no folder, no manifest)."""
    out = ctx.tmp / "out"
    assert (out / PAIRS / "manifest.json").is_file(), "the stages before the policy are kept"
    assert not (out / POLICY).exists(), f"{POLICY} was published"
    assert not list((out / "iter_1").glob(".policy.tmp*")), "the unpublished round left a temporary folder"


def _quiet(ctx: Ctx, monkeypatch) -> None:
    """No progress bars on stderr (datasets', transformers', EVA's; the trainer's: ``disable_tqdm``): a run
    that refuses after stages ran then prints its one line alone."""
    import importlib

    import transformers.utils.logging

    bars = importlib.import_module("datasets.utils.tqdm")  # the module, not the `tqdm` class it exports
    monkeypatch.setattr(bars, "_hf_datasets_progress_bars_disabled", True)
    monkeypatch.setattr(transformers.utils.logging, "_tqdm_active", False)
    monkeypatch.setenv("EVA_DISABLE_PROGRESS", "1")


def _one_round(**top):
    """The shortest run that trains: one round without the creator, no progress bars from the trainer."""
    return recipe(creator="none", disable_tqdm=True, eva={"iterations": 1}, **top)


def _plain_dpo(**top):
    """A plain DPO round (no ``creator:``) on a small preference file, two steps."""
    def build(ctx: Ctx) -> list[str]:
        prefs = ctx.tmp / "prefs.jsonl"
        turn = [{"role": "user", "content": "name a colour"}]
        prefs.write_text("".join(json.dumps({
            "chosen": [*turn, {"role": "assistant", "content": f"blue, the colour of the sea {i}"}],
            "rejected": [*turn, {"role": "assistant", "content": "no"}]}) + "\n" for i in range(4)))
        mixture = {"datasets": [{"id": str(prefs), "columns": ["chosen", "rejected"]}], "seed": 0}
        path = ctx.write(creator=None, eva=None, dataset_mixture=mixture, max_steps=2, disable_tqdm=True, **top)
        return ["--config", str(path)]
    return build


def _sharded_fsdp_save(ctx: Ctx, monkeypatch) -> None:
    """The policy's save as under FSDP with ``SHARDED_STATE_DICT`` (the repo's fsdp.yaml before issue 22):
    transformers' own ``Trainer.save_model`` runs its FSDP branch, which writes no weights for that state
    dict type. FSDP itself cannot run here (accelerate 1.16 turns it on only for GPU-type launches), so only
    the save sees it: the trainer is marked FSDP and the accelerate state holds a real FSDP2 plugin set to
    SHARDED_STATE_DICT, both for the call alone."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import Trainer

    real = Trainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        state, fsdp = AcceleratorState._shared_state, self.is_fsdp_enabled
        state["fsdp_plugin"] = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
        self.is_fsdp_enabled = True
        try:
            return real(self, output_dir, _internal_call)
        finally:
            self.is_fsdp_enabled = fsdp
            del state["fsdp_plugin"]

    monkeypatch.setattr(Trainer, "save_model", save_model)
    _quiet(ctx, monkeypatch)


def _nothing_saved(ctx: Ctx) -> None:
    assert not list((ctx.tmp / "out").glob("*.safetensors")), "a plain DPO round saved NaN weights"


def _mixture(**changes):
    def edit(cfg: dict, ctx: Ctx) -> None:
        cfg["dataset_mixture"].update(changes)
    return edit


def _entry(**changes):
    def edit(cfg: dict, ctx: Ctx) -> None:
        cfg["dataset_mixture"]["datasets"][0].update(changes)
    return edit


def _trl_datasets(fraction):
    def edit(cfg: dict, ctx: Ctx) -> None:
        del cfg["dataset_mixture"]
        cfg["datasets"] = [{"path": str(ctx.prompts), "split": "train", "fraction": fraction},
                           {"path": str(ctx.prompts), "split": "train", "fraction": 0.5}]
    return edit


def _gen(block: str = "generation", **values) -> dict:
    return {block: {"max_new_tokens": 12, "batch_size": 8, **values}}


TRAINING = {
    # class 1: values that train a policy with NaN weights, or none at all
    "learning-rate-inf": (recipe(learning_rate=INF), "`learning_rate` must be a finite number"),
    "learning-rate-nan": (recipe(learning_rate=NAN), "`learning_rate` must be a finite number"),
    "learning-rate-negative": (recipe(learning_rate=-1.0e-3), "`learning_rate` must be > 0"),
    "learning-rate-zero": (recipe(learning_rate=0.0), "`learning_rate` must be > 0"),
    "cli-learning-rate-inf": (recipe("--learning_rate", "inf"), "`learning_rate` must be a finite number"),
    "weight-decay-nan": (recipe(weight_decay=NAN), "`weight_decay` must be a finite number"),
    "weight-decay-negative": (recipe(weight_decay=-0.1), "`weight_decay` must be >= 0"),
    "beta-nan": (recipe(beta=NAN), "`beta` must be a finite number"),
    "beta-inf": (recipe(beta=INF), "`beta` must be a finite number"),
    "beta-negative": (recipe(beta=-1.0), "`beta` must be > 0"),
    "beta-zero": (recipe(beta=0.0), "`beta` must be > 0"),
    "loss-args-beta-inf": (recipe(eva={"loss": "dpo", "loss_args": {"beta": INF}}), "`eva.loss_args.beta`"),
    "loss-args-beta-negative": (recipe(eva={"loss": "ipo", "loss_args": {"beta": -0.1}}), "`eva.loss_args.beta`"),
    "loss-args-nll-alpha-nan": (recipe(eva={"loss_args": {"nll_alpha": NAN}}), "`eva.loss_args.nll_alpha`"),
    "loss-args-lambda-zero": (recipe(eva={"loss": "orpo", "loss_args": {"lambda": 0}}), "`eva.loss_args.lambda`"),
    "epochs-negative": (recipe(num_train_epochs=-1), "`num_train_epochs` must be > 0"),
    "epochs-zero": (recipe(num_train_epochs=0), "`num_train_epochs` must be > 0"),
    "epochs-nan": (recipe(num_train_epochs=NAN), "`num_train_epochs` must be a finite number"),
    "max-steps-below-minus-one": (recipe(max_steps=-5), "`max_steps` must be >= -1"),
    # class 2: every other training key
    "batch-size-zero": (recipe(per_device_train_batch_size=0), "`per_device_train_batch_size` must be >= 1"),
    "batch-size-negative": (recipe(per_device_train_batch_size=-4), "`per_device_train_batch_size` must be >= 1"),
    "batch-size-float": (recipe(per_device_train_batch_size=2.5), "`per_device_train_batch_size` must be an int"),
    "accumulation-zero": (recipe(gradient_accumulation_steps=0), "`gradient_accumulation_steps` must be >= 1"),
    "accumulation-negative": (recipe(gradient_accumulation_steps=-1), "`gradient_accumulation_steps` must be >= 1"),
    "max-length-zero": (recipe(max_length=0), "`max_length` must be >= 2"),
    "max-length-negative": (recipe(max_length=-512), "`max_length` must be >= 2"),
    "max-length-one": (recipe(max_length=1), "`max_length` must be >= 2"),
    "warmup-steps-negative": (recipe(warmup_steps=-1), "warmup_steps"),
    "warmup-steps-nan": (recipe(warmup_steps=NAN), "`warmup_steps` must be a finite number"),
    "warmup-ratio-inf": (recipe(warmup_ratio=INF), "`warmup_steps` must be a finite number"),
    "seed-negative": (recipe(seed=-1), "`seed` must be >= 0"),
    "seed-over-2-32": (recipe(seed=2**32), "`seed` must be <= 4294967295"),
    "seed-float": (recipe(seed=1.5), "`seed` must be an int"),
    "data-seed-negative": (recipe(data_seed=-3), "`data_seed` must be >= 0"),
    "max-grad-norm-nan": (recipe(max_grad_norm=NAN), "`max_grad_norm` must be a finite number"),
    "max-grad-norm-negative": (recipe(max_grad_norm=-1.0), "`max_grad_norm` must be >= 0"),
    "adam-beta1-one": (recipe(adam_beta1=1.0), "`adam_beta1` must be < 1"),
    "adam-beta2-nan": (recipe(adam_beta2=NAN), "`adam_beta2` must be a finite number"),
    "adam-epsilon-zero": (recipe(adam_epsilon=0.0), "`adam_epsilon` must be > 0"),
    "label-smoothing-too-high": (recipe(label_smoothing=0.9), "`label_smoothing` must be <= 0.5"),
    "loss-weights-nan": (recipe(loss_type=["sigmoid"], loss_weights=[NAN]), "`loss_weights` items"),
    "logging-steps-negative": (recipe(logging_steps=-1), "`logging_steps` must be > 0"),
    "dataset-num-proc-zero": (recipe(dataset_num_proc=0), "`dataset_num_proc` must be >= 1"),
    "cli-seed-negative": (recipe("--seed", "-7"), "`seed` must be >= 0"),
    # every float of the eva: block is finite
    "temperature-inf": (recipe(eva=_gen(temperature=INF)), "`eva.generation.temperature` must be a finite"),
    "evolver-temperature-nan": (recipe(eva=_gen("evolver_generation", temperature=NAN)),
                                "`eva.evolver_generation.temperature` must be a finite"),
    "judge-top-p-nan": (recipe(eva=_gen("judge_generation", top_p=NAN)), "`eva.judge_generation.top_p`"),
    "eval-temperature-inf": (recipe(eva={"eval_temperature": INF}), "`eva.eval_temperature` must be a finite"),
    "length-penalty-inf": (recipe(eva={"length_penalty": INF}), "`eva.length_penalty` must be a finite"),
    "length-penalty-nan": (recipe(eva={"length_penalty": NAN}), "`eva.length_penalty` must be a finite"),
    "rewriter-ratio-inf": (recipe(eva={"rewriter_max_length_ratio": INF}), "`eva.rewriter_max_length_ratio`"),
    "subset-fraction-nan": (recipe(eva={"subset_fraction": NAN}), "`eva.subset_fraction` must be a finite"),
    "evolved-fraction-nan": (recipe(eva={"evolved_fraction": NAN}), "`eva.evolved_fraction` must be a finite"),
    "near-duplicate-nan": (recipe(eva={"near_duplicate_threshold": NAN}), "`eva.near_duplicate_threshold`"),
    "eva-seed-negative": (recipe(eva={"seed": -1}), "eva.seed must be in [0, 2**32 - 1]"),
    "cli-length-penalty-nan": (recipe("--eva.length_penalty", ".nan"), "`eva.length_penalty` must be a finite"),
    # the dataset mixture
    "mixture-weight-nan": (edited(_entry(weight=NAN)), "`dataset_mixture.datasets[].weight` must be a finite"),
    "mixture-weight-bool": (edited(_entry(weight=True)), "`dataset_mixture.datasets[].weight`"),
    "mixture-fraction-inf": (edited(_trl_datasets(INF)), "`datasets[].fraction` must be a finite"),
    "mixture-fraction-nan": (edited(_trl_datasets(NAN)), "`datasets[].fraction` must be a finite"),
    "mixture-seed-word": (edited(_mixture(seed="abc")), "`dataset_mixture.seed` must be an int"),
    "mixture-seed-negative": (edited(_mixture(seed=-1)), "`dataset_mixture.seed` must be an int in [0"),
    "mixture-seed-float": (edited(_mixture(seed=1.7)), "`dataset_mixture.seed` must be an int"),
    "mixture-id-number": (edited(_entry(id=123)), "`dataset_mixture.datasets[].id` must be a string"),
    "mixture-id-list": (edited(_entry(id=["a", "b"])), "`dataset_mixture.datasets[].id` must be a string"),
    "mixture-split-number": (edited(_entry(split=0)), "`dataset_mixture.datasets[].split` must be a string"),
    "mixture-columns-numbers": (edited(_entry(columns=[1, 2])), "`dataset_mixture.datasets[].columns`"),
    "test-split-size-nan": (edited(_mixture(test_split_size=NAN)), "`dataset_mixture.test_split_size` must be"),
    "test-split-size-one": (edited(_mixture(test_split_size=1.0)), "`dataset_mixture.test_split_size` must be"),
    "test-split-size-word": (edited(_mixture(test_split_size="10%")), "`dataset_mixture.test_split_size` must be"),
    "test-split-size-zero": (edited(_mixture(test_split_size=0)), "`dataset_mixture.test_split_size` must be"),
    "top-test-split-size-negative": (recipe(test_split_size=-0.1), "`test_split_size` must be"),
    # new tokens bounded by the context of the model that generates them (tiny policy: 4096)
    "max-new-tokens-over-context": (recipe(eva=_gen(max_new_tokens=5000)), "`eva.generation.max_new_tokens`"),
    "max-new-tokens-equal-context": (recipe(eva=_gen(max_new_tokens=4096)), "context"),
    "evolver-max-new-tokens-over-context": (recipe(eva=_gen("evolver_generation", max_new_tokens=9000)),
                                            "`eva.evolver_generation.max_new_tokens`"),
    "rewriter-over-context": (recipe(eva={"rewriter": True, **_gen(max_new_tokens=3000)}),
                              "eva.rewriter_max_length_ratio"),
    "cli-max-new-tokens-over-context": (recipe("--eva.generation.max_new_tokens", "100000"), "policy's context"),
}

#: The values issue 20 saw train a policy with NaN weights or publish an unchanged one (class 1); the rest: class 2.
CLASS_1 = {"learning-rate-inf", "learning-rate-nan", "learning-rate-negative", "learning-rate-zero",
           "cli-learning-rate-inf", "weight-decay-nan", "weight-decay-negative", "beta-nan", "beta-inf",
           "beta-negative", "beta-zero", "loss-args-beta-inf", "loss-args-beta-negative", "epochs-negative",
           "epochs-zero", "epochs-nan"}

CASES: dict[str, Case] = {
    **{name: Case(build, expect, group="20.1" if name in CLASS_1 else "20.2")
       for name, (build, expect) in TRAINING.items()},
    # a round that trains to weights that are not finite (an update of 1e39 overflows float32) is refused after
    # training: one line, the pairs kept, no policy published
    "weights-not-finite": Case(_one_round(learning_rate=1.0e39, max_grad_norm=0.0), "iter_1/policy not published",
                               group="20.1", after_load=True, check=_not_published, setup=_quiet),
    "plain-dpo-weights-not-finite": Case(_plain_dpo(learning_rate=1.0e39, max_grad_norm=0.0), "NaN or infinite",
                                         group="20.1", after_load=True, check=_nothing_saved, setup=_quiet),
    # a save that writes no weights (FSDP with SHARDED_STATE_DICT) is refused before the policy is published
    "sharded-fsdp-save-writes-no-weights": Case(_one_round(), "iter_1/policy not published: no loadable weights "
                                                "written (the save wrote no weight file); with FSDP set "
                                                "fsdp_state_dict_type: FULL_STATE_DICT", group="issue 22",
                                                after_load=True, check=_not_published, setup=_sharded_fsdp_save),
    # a max_length every prompt fills (TRL drops each such pair) is refused before training, no policy published
    "max-length-below-every-prompt": Case(_one_round(max_length=3), "raise max_length", group="20.2",
                                          after_load=True, check=_not_published, setup=_quiet),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


def _training(**values):
    from trl import DPOConfig

    return DPOConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True, **values)


def test_a_valid_trainer_config_passes():
    check_training(_training())
    check_training(_training(max_length=None, warmup_steps=0.1, data_seed=None, loss_weights=[0.5]))


def test_max_steps_overrides_epochs():
    """transformers trains ``max_steps`` when it is > 0 and ignores ``num_train_epochs``: not refused then."""
    check_training(_training(num_train_epochs=0, max_steps=5))
    with pytest.raises(RecipeError, match="or set max_steps > 0"):
        check_training(_training(num_train_epochs=0, max_steps=-1))


def test_every_rule_names_a_trainer_key():
    from trl import DPOConfig

    assert set(TRAINING_RULES) <= {f.name for f in dataclasses.fields(DPOConfig)}


def test_nan_weights_or_no_step_are_never_published(models):
    """The check the policy stage runs after training, on a real model: a NaN weight, an infinite one, or
    a round of zero steps is refused; a trained finite model is not."""
    model = load_causal_lm(str(models["policy"]), dtype=None)
    total = sum(1 for _ in model.parameters())
    assert nonfinite_parameters(model) == []
    assert unusable_round(3, [], total) is None
    assert "no optimiser step" in unusable_round(0, [], total)
    name, weight = next(iter(model.named_parameters()))
    with torch.no_grad():
        weight[0, 0] = NAN
        model.lm_head.weight[1, 1] = INF
    assert nonfinite_parameters(model) == [name, "lm_head.weight"]
    assert "2 of" in unusable_round(3, nonfinite_parameters(model), total)
    assert issubclass(TrainingError, RuntimeError)


def test_context_length_is_read_without_loading(tmp_path, models):
    assert context_length(str(models["policy"])) == 4096
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"n_positions": 64}}))
    assert context_length(str(tmp_path)) == 64
    (tmp_path / "config.json").write_text("{}")
    assert context_length(str(tmp_path)) is None
    assert context_length(str(tmp_path / "nothing")) is None


def test_generation_room_follows_the_model_that_generates(tmp_path, models):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 100}))
    small = str(tmp_path)
    eva = eva_arguments({"evolver_model": small, "evolver_generation": {"max_new_tokens": 99}})
    check_generation_room(str(models["policy"]), eva, "eva")
    check_generation_room(small, eva, None)  # a plain DPO round samples nothing
    eva = eva_arguments({"evolver_model": small, "evolver_generation": {"max_new_tokens": 100}})
    with pytest.raises(RecipeError, match="evolver's context"):
        check_generation_room(str(models["policy"]), eva, "eva")
    served = eva_arguments({"evolver_model": "served", "evolver_generation": {
        "max_new_tokens": 100000, "backend": "openai", "options": {"base_url": "http://localhost:1/v1"}}})
    check_generation_room(str(models["policy"]), served, "eva")  # the server knows its own limit


def test_the_policy_stage_check_on_a_real_trainer(models, tmp_path):
    """``check_trained`` on a real DPO trainer (what ``train_round`` calls before it saves): zero steps or a
    NaN weight raise ``TrainingError``, whose message the policy stage prints; a finite model after steps passes."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from eva_plugin.modeling import load_tokenizer
    from eva_plugin.solver.training import check_trained

    model = load_causal_lm(str(models["policy"]), dtype=None)
    turn = [{"role": "user", "content": "name a colour"}]
    pairs = Dataset.from_list([{"prompt": turn, "chosen": [{"role": "assistant", "content": "blue"}],
                                "rejected": [{"role": "assistant", "content": "no"}]}] * 2)
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, max_steps=1,
                     per_device_train_batch_size=2, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pairs,
                         processing_class=load_tokenizer(str(models["policy"])))
    check_trained(trainer, 1)
    with pytest.raises(TrainingError, match="no optimiser step"):
        check_trained(trainer, 0)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = NAN
    with pytest.raises(TrainingError, match="1 of .* NaN or infinite .*lm_head.weight"):
        check_trained(trainer, 1)
