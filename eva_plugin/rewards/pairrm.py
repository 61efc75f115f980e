"""PairRM (LLM-Blender's 0.4B pair ranker) as a reward model, scored the way SPPO's authors use it.

PairRM is a DeBERTa-v3 encoder reading ``<|source|> x <|candidate1|> a <|candidate2|> b``; a small
head reads the encoder's states at the three prefix tokens, and the comparison's logit is
head(x, a) − head(x, b) (> 0: a is better). Every ordered pair (i, j), i ≠ j, of a prompt's
responses is compared, C[i, j] being that logit, and response i's reward is LLM-Blender's
aggregate score s_i = (1/n) Σ_j (C[i, j] − C[j, i]) — the ``rank(..., return_scores=True)``
numbers the EVA and SPPO scripts feed to ``compute_prob.py``. Scores are relative to a prompt's
own samples (they sum to 0 over them).

The checkpoint is the transformers layout ``llm-blender/PairRM-hf`` (the weights of
``llm-blender/PairRM`` saved with ``save_pretrained``): a DeBERTa-v2 config that also names the
prefix token ids, ``n_tasks`` and ``drop_out``. Inputs are cut as that model card describes:
the source to ``source_max_length`` tokens, each candidate to half of what is left of
``source_max_length + 2 * candidate_max_length``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from eva_plugin.batching import length_batches
from eva_plugin.errors import RecipeError
from eva_plugin.generation import Conversation, last_user_turn
from eva_plugin.modeling import (
    load_scorer,
    load_tokenizer,
    loading_options,
    pick_device,
    release,
)
from eva_plugin.options import ModelContext
from eva_plugin.progress import bar
from eva_plugin.rewards.options import PREFIXES, PairRMOptions, pairrm_config_fault


def pair_ranker_class():
    """The PairRM module (built on first use so that importing this file needs no transformers model code)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

    class DebertaV2PairRM(DebertaV2PreTrainedModel):
        """DeBERTa-v2 encoder plus PairRM's comparison head; class and parameter names as in the checkpoint."""

        def __init__(self, config) -> None:
            super().__init__(config)
            hidden, drop = config.hidden_size, float(getattr(config, "drop_out", 0.0) or 0.0)
            self.pretrained_model = DebertaV2Model(config)
            # indices 1 and 4 hold the checkpoint's ``head_layer.{1,4}.*`` weights
            self.head_layer = nn.Sequential(nn.Dropout(drop), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                            nn.Dropout(drop), nn.Linear(hidden, config.n_tasks))
            self.post_init()

        def compare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """One logit per row: > 0 when candidate 1 is better than candidate 2."""
            states = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)

            def at(token_id: int) -> torch.Tensor:  # the state at the (first) prefix token of each row
                return states[rows, (input_ids == token_id).int().argmax(dim=1)]

            source = at(self.config.source_prefix_id)
            first = self.head_layer(torch.cat([source, at(self.config.cand1_prefix_id)], dim=-1))
            second = self.head_layer(torch.cat([source, at(self.config.cand2_prefix_id)], dim=-1))
            return (first - second).mean(dim=-1)

    return DebertaV2PairRM


class PairRMReward:
    """Rewards from PairRM: each response's aggregate score against the prompt's other samples."""

    Options = PairRMOptions

    @classmethod
    def from_options(cls, path: str, options: PairRMOptions, context: ModelContext) -> PairRMReward:
        """The registered factory: the recipe's ``reward_options`` and this process's device."""
        return cls(path, device=context.device, **options.as_dict())

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 16,
        max_batch_tokens: int | None = 32768,
        source_max_length: int = 1224,
        candidate_max_length: int = 412,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import AutoConfig

        self.device = pick_device(device)
        self.batch_size, self.max_batch_tokens = max(1, int(batch_size)), max_batch_tokens
        self.source_max_length, self.candidate_max_length = int(source_max_length), int(candidate_max_length)
        extra = loading_options(revision=revision, attn_implementation=attn_implementation)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
        if fault := pairrm_config_fault(config.to_dict()):
            raise RecipeError(f"reward model {path} is not a PairRM checkpoint ({fault}); `reward_type: pairrm` "
                              "needs the transformers layout of PairRM (llm-blender/PairRM-hf)")
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, revision=revision)
        ids = {key: self.tokenizer.convert_tokens_to_ids(token) for key, token in PREFIXES.items()}
        if any(ids[key] != getattr(config, key) for key in PREFIXES):
            raise RecipeError(f"reward model {path}: the tokenizer's ids of {', '.join(PREFIXES.values())} "
                              f"({', '.join(map(str, ids.values()))}) are not the ones config.json names")
        self.model = load_scorer(pair_ranker_class(), path, self.device, dtype, config=config, **extra)
        self.device = str(self.model.device)

    def _encode(self, text: str, prefix: str, limit: int) -> list[int]:
        for token in PREFIXES.values():  # a prefix inside the text would be read as another field
            text = text.replace(token, " ")
        return self.tokenizer.encode(prefix + text, max_length=max(limit, 2), truncation=True)

    def encode_pair(self, source: str, first: str, second: str) -> list[int]:
        """``<|source|> x``, ``<|candidate1|> a``, ``<|candidate2|> b`` with PairRM's length budget."""
        src = self._encode(source, PREFIXES["source_prefix_id"], self.source_max_length)
        room = (self.source_max_length + 2 * self.candidate_max_length - len(src)) // 2
        return (src + self._encode(first, PREFIXES["cand1_prefix_id"], room)
                + self._encode(second, PREFIXES["cand2_prefix_id"], room))

    @torch.no_grad()
    def compare(self, rows: list[list[int]]) -> list[float]:
        """The comparison logit of every encoded row, in length-sorted batches."""
        out = [0.0] * len(rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with bar(len(rows), "scoring", "comparison") as progress:
            for batch in length_batches([len(r) for r in rows], self.batch_size, self.max_batch_tokens):
                width = max(len(rows[i]) for i in batch)
                ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in batch], device=self.model.device)
                mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in batch],
                                    device=self.model.device)
                for i, logit in zip(batch, self.model.compare(ids, mask).float().tolist()):
                    out[i] = logit
                progress.update(len(batch))
        return out

    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]:
        jobs = [(p, i, j) for p, rs in enumerate(responses) for i, j in itertools.permutations(range(len(rs)), 2)]
        sources = [last_user_turn(c) for c in conversations]
        logits = self.compare([self.encode_pair(sources[p], responses[p][i], responses[p][j]) for p, i, j in jobs])
        matrices = [np.zeros((len(rs), len(rs))) for rs in responses]
        for (p, i, j), logit in zip(jobs, logits):
            matrices[p][i, j] = logit
        return [aggregate_scores(c).tolist() for c in matrices]

    def close(self) -> None:
        del self.model
        release()


def aggregate_scores(comparisons: np.ndarray) -> np.ndarray:
    """LLM-Blender's score of each candidate from the comparison logits C (C[i, j] > 0: i beats j,
    zero diagonal): s_i = (1/n) Σ_j (C[i, j] − C[j, i])."""
    c = np.asarray(comparisons, dtype=float)
    if c.size == 0:
        return np.zeros(0)
    return (c - c.T).mean(axis=1)
