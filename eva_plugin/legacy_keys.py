"""Recipe keys and flags that TRL, transformers or the Handbook renamed or removed: mapped or dropped
with one note each (never an "unknown key" error)."""

from __future__ import annotations

#: Legacy key → new key (renamed in TRL / transformers).
RENAMED = {
    "torch_dtype": "dtype",
    "evaluation_strategy": "eval_strategy",
    "preprocessing_num_workers": "dataset_num_proc",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float in [0, 1) is a ratio
    "no_cuda": "use_cpu",
}

#: Legacy keys with no counterpart any more → why they are ignored.
DROPPED = {
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
}
