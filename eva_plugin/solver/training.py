"""One preference-optimisation round: a fresh TRL ``DPOTrainer`` per round.

The policy starts from the previous round's checkpoint; the reference model is always
passed explicitly (TRL would otherwise reload the *original* checkpoint as reference).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from eva_plugin.errors import TrainingError
from eva_plugin.modeling import (
    load_causal_lm,
    load_tokenizer,
    model_kwargs,
    pick_device,
    quantized,
    release,
    whole_weights,
)
from eva_plugin.solver.losses import loss_knobs, pair_columns, round_config, spec, trainer_class, trainer_kwargs
from eva_plugin.tracking import continued

logger = logging.getLogger(__name__)


def _listed(value) -> list | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def round_arguments(training, output_dir: Path):
    """A copy of the round's trainer config: no checkpoints, no hub, no eval."""
    args = copy.deepcopy(training)
    args.output_dir = str(output_dir)
    args.save_strategy = "no"
    args.push_to_hub = False
    args.eval_strategy = "no"
    args.do_eval = False
    args.load_best_model_at_end = False
    args.resume_from_checkpoint = None
    if torch.device(pick_device()).type == "cpu":
        args.dataloader_pin_memory = False  # nothing to pin for
    return args


def quiet_train(trainer, **kwargs):
    """``trainer.train(**kwargs)`` without the two warnings known harmless here: TRL reads transformers'
    deprecated ``is_gradient_checkpointing`` alias each round, and torch's DataLoader warns that there is
    nothing to pin on a machine without an accelerator."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"'pin_memory' argument is set as true but no accelerator",
                                category=UserWarning)
        return trainer.train(**kwargs)


def local_shard(param: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: its ZeRO-3 partition (``ds_tensor``), its FSDP2 shard
    (a ``DTensor``'s local tensor), else the parameter itself."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    to_local = getattr(param, "to_local", None)  # torch.distributed.tensor.DTensor
    return to_local() if callable(to_local) else param


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (this process's shard under ZeRO-3 / FSDP2)."""
    with torch.no_grad():
        return [name for name, p in model.named_parameters()
                if not bool(torch.isfinite(local_shard(p).detach()).all())]


def unusable_round(steps: int, nonfinite: list[str], total: int) -> str | None:
    """Why a trained round must not be published as a policy, or None."""
    if steps == 0:
        return ("training took no optimiser step, so the policy would be the previous one unchanged; check "
                "num_train_epochs / max_steps against the number of pairs")
    if nonfinite:
        return (f"training left {len(nonfinite)} of {total} weight tensors NaN or infinite (first: {nonfinite[0]}); "
                "lower learning_rate (or check beta, weight_decay, max_grad_norm) and rerun")
    return None


def check_trained(trainer, steps: int) -> None:
    """Refuse (``TrainingError``, on every process alike) a round that took no step or left a weight
    that is not finite: the caller publishes nothing, the earlier stages stay."""
    problem = _trained_problem(trainer, steps)  # its frame, which holds the model, is gone before the raise
    if problem:
        raise TrainingError(problem)


def _trained_problem(trainer, steps: int) -> str | None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    bad = nonfinite_parameters(model)
    flags = torch.tensor([len(bad)], device=trainer.accelerator.device)
    if int(trainer.accelerator.reduce(flags, reduction="sum").item()) and not bad:
        bad = ["(on another process)"]
    return unusable_round(steps, bad, sum(1 for _ in model.parameters()))


def check_trainable(trainer, pairs: int) -> None:
    """Refuse a round whose pairs TRL all dropped: every prompt alone fills ``max_length`` (TRL drops such
    a pair, its response would be cut off entirely)."""
    if len(trainer.train_dataset) == 0:
        raise TrainingError(f"max_length {trainer.args.max_length} leaves no room for a response: the prompt of "
                            f"each of the {pairs} pairs alone is as long; raise max_length")


def parameter_checksum(model: torch.nn.Module) -> float:
    """A cheap identity of a model's weights: the float64 sum of |θ| over all parameters, whole parameters
    wherever the trainer sharded them (a ZeRO-3 parameter is gathered, an FSDP2 ``DTensor`` assembled, one
    at a time): the same number on every process, which must all call it together."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            with whole_parameter(p) as whole:
                total += float(whole.detach().double().abs().sum().item())
    return total


@contextmanager
def whole_parameter(param: torch.Tensor) -> Iterator[torch.Tensor]:
    """``param`` with all its values on this process: a ZeRO-3 parameter (``ds_id``) gathered for the
    block (``deepspeed.zero.GatheredParameters``, read-only), an FSDP2 ``DTensor`` as its full tensor; a
    collective in both cases."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            yield param
        return
    full_tensor = getattr(param, "full_tensor", None)  # torch.distributed.tensor.DTensor
    yield full_tensor() if callable(full_tensor) else param


@torch.no_grad()
def sequence_logp(model, tokenizer, prompt: list[dict], response: list[dict]) -> float:
    """log p(response | prompt) under ``model``, both rendered with the tokenizer's chat template."""
    context = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]], device=model.device)
    logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    token_logps = logps.gather(-1, targets[:, None]).squeeze(-1)
    return float(token_logps[len(context_ids) - 1 :].sum())


def _reference(model, policy_path: str, reference_path: str, dtype, trust: bool, model_args=None):
    """The reference model: a copy of the freshly loaded policy when both are the same checkpoint
    (``reference: previous``), else loaded from its own path with the recipe's loading keywords.
    Under ZeRO-3 the weights are partitioned across processes, and a quantized model cannot be
    copied, so then it is always loaded."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    loading = model_kwargs(model_args, reference_path) if model_args is not None else {}
    if str(reference_path) == str(policy_path) and not is_deepspeed_zero3_enabled() and not quantized(loading):
        return copy.deepcopy(model)
    return load_causal_lm(reference_path, dtype=dtype, trust_remote_code=trust, training=True, **loading)


def train_round(
    pairs: Dataset,
    *,
    policy_path: str,
    reference_path: str,
    training,
    model_args,
    save_dir: Path,
    loss: str | None = "dpo",
    knobs: dict[str, float] | None = None,
    attach: Callable[[Any], None] | None = None,
    barrier: Callable[[], None] | None = None,
) -> dict:
    """Train on ``pairs`` from ``policy_path`` with ``loss`` (against ``reference_path`` where the
    loss has a reference; ``None``: the recipe's own DPOConfig loss); save a checkpoint in ``save_dir``.
    ``attach`` sees the trainer before it trains (the run's trackers and step offset, ``tracking.py``);
    ``barrier`` is where the processes wait while the main process saves (default: the trainer's
    ``wait_for_everyone``; the loop passes its own group's, with the run's long timeout)."""
    from trl import get_peft_config

    knobs = knobs if knobs is not None else loss_knobs(loss, {})
    dtype = model_args.dtype
    trust = bool(training.trust_remote_code)
    loading = model_kwargs(model_args, policy_path)  # revision, attention, quantization
    model = load_causal_lm(policy_path, dtype=dtype, trust_remote_code=trust, training=True, **loading)
    tokenizer = load_tokenizer(policy_path, trust_remote_code=trust, revision=loading.get("revision"))
    args = round_arguments(round_config(training, loss, knobs), save_dir / "trainer_state")
    kwargs = trainer_kwargs(loss, knobs)
    ref_model = None
    if spec(loss).uses_reference:
        ref_model = kwargs["ref_model"] = _reference(model, policy_path, reference_path, dtype, trust,
                                                     model_args)
    trainer = continued(trainer_class(loss))(
        model=model,
        args=args,
        train_dataset=pairs.select_columns(pair_columns(loss)),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        **kwargs,
    )
    uses_reference = ref_model is not None
    kwargs.clear()
    model = ref_model = None  # the trainer holds them now; ``free_trainer`` lets go of them
    try:
        if attach is not None:
            attach(trainer)
        stats = _train_and_save(trainer, pairs, tokenizer, save_dir, trust, barrier)
    finally:
        free_trainer(trainer)
    stats.update(policy_from=str(policy_path), loss=loss,
                 loss_type=_listed(getattr(args, "loss_type", None)),  # what TRL trained with
                 loss_weights=getattr(args, "loss_weights", None), knobs=knobs,
                 reference=str(reference_path) if uses_reference else None)
    return stats


def _train_and_save(trainer, pairs: Dataset, tokenizer, save_dir: Path, trust: bool,
                    barrier: Callable[[], None] | None = None) -> dict:
    """Train, refuse an unusable round, save the policy in ``save_dir`` and check that it loads; the
    round's numbers for the manifest."""
    ref = getattr(trainer, "ref_model", None)
    reference_checksum = parameter_checksum(ref) if ref is not None else None
    # the reference's log-prob of the first pair's chosen response: shows which model it is
    probe = sequence_logp(ref, tokenizer, pairs[0]["prompt"], pairs[0]["chosen"]) if ref is not None else None
    del ref
    check_trainable(trainer, len(pairs))
    output = quiet_train(trainer)
    check_trained(trainer, output.global_step)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    last = logs[-1] if logs else {}
    accelerator = trainer.accelerator
    if hasattr(trainer.model, "merge_and_unload"):
        # LoRA: the next round samples from, and is referenced against, the merged weights
        merged = accelerator.unwrap_model(trainer.model).merge_and_unload()
        if accelerator.is_main_process:
            merged.save_pretrained(save_dir, safe_serialization=True)
            tokenizer.save_pretrained(save_dir)
        del merged
    else:
        trainer.save_model(str(save_dir))  # every rank: gathers ZeRO-3 / FSDP shards
        if accelerator.is_main_process:
            tokenizer.save_pretrained(save_dir)
            (save_dir / "training_args.bin").unlink(missing_ok=True)
    (barrier or accelerator.wait_for_everyone)()  # the main process may save a merged LoRA model
    check_saved(accelerator, save_dir, trust)
    # close this round's trackers; not ``trainer.end()``: that also destroys the process group,
    # which the next stages and rounds still use (dpo.run_recipe destroys it once, at the end)
    for tracker in accelerator.trackers:
        tracker.finish()
    return {
        "train_loss": output.training_loss,
        "steps": output.global_step,
        "processes": accelerator.num_processes,
        "last_loss": last.get("loss"),
        "reward_accuracy": last.get("rewards/accuracies"),
        "reward_margin": last.get("rewards/margins"),
        "reference_checksum": reference_checksum,
        "reference_logp_probe": probe,
    }


def saved_weights_fault(folder: Path, trust_remote_code: bool = False) -> str:
    """Why the checkpoint just saved in ``folder`` would not load as the trained model; "" when it would.

    No weight file (a trainer under FSDP with ``SHARDED_STATE_DICT`` saves none), a broken or truncated
    safetensors file, a shard its index names that is not there, or a tensor of ``config.json``'s model
    missing or of another shape: transformers itself reads the folder onto the meta device (file headers
    only, no weights in memory) and reports what it could not load."""
    import transformers
    from transformers import AutoModelForCausalLM

    from eva_plugin.model_files import WEIGHT_PATTERNS, model_config, read_json, weights_fault

    if not any(f.is_file() for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)):
        return "the save wrote no weight file"
    if fault := weights_fault(folder):
        return fault
    for index in folder.glob("*.index.json"):
        names = read_json(index)
        shards = set(names.get("weight_map", {}).values()) if isinstance(names, dict) else set()
        if missing := sorted(s for s in shards if not (folder / s).is_file()):
            return f"{index.name} names {len(missing)} shard(s) that are not there (first: {missing[0]})"
    if "quantization_config" in model_config(folder):
        return ""  # read back only by its quantizer, on its device: the files above are all there is to check
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the loader's own report: said below, in one line
    try:
        with whole_weights():
            # use_kernels=False: transformers >= 5.25 swaps in hub kernels by default, and they refuse "meta"
            _, info = AutoModelForCausalLM.from_pretrained(folder, device_map="meta", output_loading_info=True,
                                                          ignore_mismatched_sizes=True, use_kernels=False,
                                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError) as err:
        return f"transformers cannot load it: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    finally:
        transformers.logging.set_verbosity(verbosity)
    for kind in ("missing_keys", "mismatched_keys"):
        if bad := sorted(map(str, info.get(kind) or ())):
            what = "missing" if kind == "missing_keys" else "of another shape than config.json's"
            return f"{len(bad)} weight tensor(s) {what} (first: {bad[0]})"
    return ""


def check_saved(accelerator, save_dir: Path, trust_remote_code: bool) -> None:
    """Refuse (``TrainingError``, on every process alike) a round whose save left no loadable weights in
    ``save_dir``; the main process looks (the others saved into a scratch folder) and tells the others."""
    from accelerate.utils import broadcast_object_list

    box = [saved_weights_fault(save_dir, trust_remote_code) if accelerator.is_main_process else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    if box[0]:
        raise TrainingError(f"no loadable weights written ({box[0]}); with FSDP set fsdp_state_dict_type: "
                            "FULL_STATE_DICT (recipes/accelerate_configs/fsdp.yaml), with DeepSpeed ZeRO-3 "
                            "zero3_save_16bit_model: true")


def free_trainer(trainer) -> None:
    """Give back what a round's trainer holds before the next stage samples: the DeepSpeed engines of the
    policy (accelerate's ``free_memory`` destroys it) and of the reference (destroyed here), the
    accelerator's references to the prepared model, optimizer, scheduler and dataloaders, the trainer's and
    its callbacks' own; then collect and empty the CUDA cache, and log the free device memory. Whatever
    still holds the trainer afterwards (an exception's traceback, the run's tracker callbacks) holds no
    model."""
    ref = getattr(trainer, "ref_model", None)
    if type(ref).__module__.startswith("deepspeed") and callable(getattr(ref, "destroy", None)):
        ref.destroy()  # TRL's reference engine under ZeRO-3: its hooks hold the partitioned parameters
    del ref
    trainer.accelerator.free_memory()
    for name in ("model", "model_wrapped", "deepspeed", "ref_model", "optimizer", "lr_scheduler"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    handler = trainer.callback_handler
    for name in ("model", "optimizer", "lr_scheduler", "train_dataloader", "eval_dataloader"):
        setattr(handler, name, None)
    release()
    from eva_plugin.generation.vllm_engines import free_memory

    logger.info("the round's trainer is freed: %s", free_memory())
