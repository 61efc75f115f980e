"""Recipe keys and flags that TRL, transformers or the Handbook renamed or removed: mapped or dropped
with one note each (never an "unknown key" error). Only a key that no version knew is unknown.

Each entry was checked against the installed versions (transformers 5, TRL 1.16): a key still in
``TrainingArguments`` / ``DPOConfig`` / ``ModelConfig`` / ``ScriptArguments`` is not listed here."""

from __future__ import annotations

#: Legacy key → new key (renamed in TRL / transformers).
RENAMED = {
    "torch_dtype": "dtype",
    "evaluation_strategy": "eval_strategy",
    "preprocessing_num_workers": "dataset_num_proc",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float in [0, 1) is a ratio
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "push_to_hub_token": "hub_token",
    "push_to_hub_model_id": "hub_model_id",
    "include_inputs_for_metrics": "include_for_metrics",
}

#: Legacy keys with no counterpart any more → what they did and what replaces them.
DROPPED = {
    "overwrite_output_dir": "transformers 5 removed it (it let a run write over output_dir); an EVA run reuses "
                            "the finished stages in output_dir, and `--overwrite_stale` rebuilds the stages made "
                            "with a different configuration",
    "max_prompt_length": "TRL 1.x removed it; `max_length` bounds prompt + response",
    "max_target_length": "TRL 1.x removed it; `max_length` bounds prompt + response",
    "max_completion_length": "TRL 1.x DPO has no separate completion bound; `max_length` is used",
    "rpo_alpha": "TRL 1.x removed it",
    "generate_during_eval": "TRL 1.x removed it",
    "use_flash_attention_2": "set `attn_implementation: flash_attention_2` instead",
    "hub_model_revision": "not used by TRL 1.x",
    "chat_template": "not applied; save the template with the checkpoint's tokenizer",
    "auto_insert_empty_system_msg": "not used by TRL 1.x",
    "truncation_side": "not used by TRL 1.x",
    "text_column": "not used by DPO",
    "dataset_num_proc_eval": "not used",
    "is_encoder_decoder": "TRL 1.x removed it; the model's config says whether it is one",
    "label_pad_token_id": "TRL 1.x removed it; labels are padded with the tokenizer's pad token",
    "padding_value": "TRL 1.x removed it; the tokenizer's pad token is used",
    "reference_free": "TRL 1.x removed it; DPO always scores against the reference model",
    "force_use_ref_model": "TRL 1.x removed it; the reference model is loaded when one is needed",
    "model_adapter_name": "TRL 1.x removed it (PEFT adapter switching for the reference)",
    "ref_adapter_name": "TRL 1.x removed it (PEFT adapter switching for the reference)",
    "ref_model_init_kwargs": "TRL 1.x loads the reference model with `model_init_kwargs`",
    "use_num_logits_to_keep": "TRL 1.x removed it (logits are kept for the completion only)",
    "use_logits_to_keep": "TRL 1.x removed it (logits are kept for the completion only)",
    "use_mps_device": "transformers 5 removed it; Apple MPS is used when available (`use_cpu: true` turns it off)",
    "logging_dir": "transformers 5 removed it; TensorBoard writes to output_dir/runs/<run_name> (or "
                   "TENSORBOARD_LOGGING_DIR)",
    "fp16_backend": "transformers 5 removed it; mixed precision is `bf16`/`fp16` through accelerate",
    "half_precision_backend": "transformers 5 removed it; mixed precision is `bf16`/`fp16` through accelerate",
    "tpu_num_cores": "transformers 5 removed it; the launcher (accelerate) sets the number of TPU cores",
    "use_legacy_prediction_loop": "transformers 5 removed it; evaluation has one loop",
    "past_index": "transformers 5 removed it (past hidden states of TransformerXL-style models)",
    "ray_scope": "transformers 5 removed it (Ray Tune's checkpoint scope; a run does no hyperparameter search)",
    "jit_mode_eval": "transformers 5 removed it; `torch_compile` compiles the model",
    "torchdynamo": "transformers 5 removed it; set `torch_compile_backend`",
    "push_to_hub_organization": "transformers 5 removed it; name the organisation in `hub_model_id` (org/name)",
    "mp_parameters": "transformers 5 removed it (SageMaker model parallelism)",
    "xpu_backend": "transformers 5 removed it; set `ddp_backend`",
    "use_ipex": "transformers 5 removed it; Intel CPUs and XPUs run through PyTorch itself",
    "include_tokens_per_second": "transformers 5 removed it; `include_num_input_tokens_seen` logs token counts",
    "save_safetensors": "transformers 5 removed it; checkpoints are always safetensors",
    "split_batches": "transformers 5 moved it into `accelerator_config` ({split_batches: …})",
    "dispatch_batches": "transformers 5 moved it into `accelerator_config` ({dispatch_batches: …})",
    "fsdp_min_num_params": "transformers 5 moved it into `fsdp_config` (min_num_params)",
    "fsdp_transformer_layer_cls_to_wrap": "transformers 5 moved it into `fsdp_config` (transformer_layer_cls_to_wrap)",
}
