"""The options each built-in reward model declares (``eva.reward_options``), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from eva_plugin.options import Options, option

#: The pair-wise judge's prompt (RLHF Workflow's preference-model format).
PAIRWISE_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {a} [RESPONSE B] {b} \n"

#: PairRM's three prefix tokens, by the config.json keys that hold their ids.
PREFIXES = {"source_prefix_id": "<|source|>", "cand1_prefix_id": "<|candidate1|>",
            "cand2_prefix_id": "<|candidate2|>"}


def pairrm_config_fault(config: dict) -> str:
    """Why a config.json is not a PairRM-hf checkpoint's (DeBERTa-v2 plus the prefix token ids and
    ``n_tasks``), or ""."""
    if config.get("model_type") != "deberta-v2":
        return f"model_type is {config.get('model_type')!r}, not deberta-v2"
    missing = [k for k in (*PREFIXES, "n_tasks") if type(config.get(k)) is not int]
    if missing:
        return f"config.json has no {', '.join(missing)}"
    return ""


@dataclass(frozen=True)
class LoadingOptions(Options):
    """How a reward model folder is loaded."""

    dtype: str | None = option(None, "Model dtype (e.g. bfloat16); null: the checkpoint's.")
    trust_remote_code: bool = option(False, "Run the folder's own modelling code (e.g. ArmoRM).")
    revision: str | None = option(None, "Revision of a hub model.")
    attn_implementation: str | None = option(None, "Attention implementation (sdpa, eager, flash_attention_2).")


@dataclass(frozen=True)
class SequenceClassificationOptions(LoadingOptions):
    batch_size: int = option(8, "At most this many (prompt, response) rows per forward pass.", ge=1)
    max_length: int = option(4096, "Rows are truncated to this many tokens.", ge=1)
    max_batch_tokens: int | None = option(32768, "Token budget of a forward pass; null: batch_size alone.", ge=1)


@dataclass(frozen=True)
class EmbeddingOptions(Options):
    dtype: str | None = option(None, "Model dtype; null: the checkpoint's.")
    trust_remote_code: bool = option(False, "Run the folder's own modelling code.")
    batch_size: int = option(32, "Texts per forward pass.", ge=1)
    max_length: int = option(256, "Texts are truncated to this many tokens.", ge=1)
    guard: bool = option(True, "Give degenerate answers (empty, very short, the prompt echoed) the floor reward.")
    min_words: int = option(3, "Guard: fewer words than this is degenerate.", ge=0)
    max_echo: float = option(0.6, "Guard: this share of word trigrams shared with the prompt is an echo.", ge=0, le=1)
    floor: float = option(-1.0, "Guard: the reward of a degenerate answer (below every cosine).")


@dataclass(frozen=True)
class PairwiseOptions(LoadingOptions):
    batch_size: int = option(8, "Comparisons per forward pass.", ge=1)
    max_batch_tokens: int | None = option(32768, "Token budget of a forward pass; null: batch_size alone.", ge=1)
    order: str = option("both", "both: judge each pair in both orders and average; random: one seeded order.",
                        choices=("random", "both"))
    seed: int = option(0, "Seed of the random order.")
    template: str = option(PAIRWISE_TEMPLATE, "The judge's prompt, with {context}, {a} and {b}.")
    labels: list[str] = option(["A", "B"], "The answer tokens meaning 'A wins' and 'B wins'.")


@dataclass(frozen=True)
class PairRMOptions(LoadingOptions):
    batch_size: int = option(16, "Comparisons per forward pass.", ge=1)
    max_batch_tokens: int | None = option(32768, "Token budget of a forward pass; null: batch_size alone.", ge=1)
    source_max_length: int = option(1224, "The prompt is cut to this many tokens (PairRM's own setting).", ge=2)
    candidate_max_length: int = option(412, "Each response gets half of what the prompt leaves of "
                                       "source_max_length + 2 × this (PairRM's own setting).", ge=2)
