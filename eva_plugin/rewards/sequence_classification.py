"""Point-wise reward from an ``AutoModelForSequenceClassification`` checkpoint."""

from __future__ import annotations

import torch

from eva_plugin.batching import context_limit, length_batches
from eva_plugin.generation import Conversation
from eva_plugin.modeling import (
    load_scorer,
    load_tokenizer,
    loading_options,
    pick_device,
    release,
)
from eva_plugin.options import ModelContext
from eva_plugin.progress import bar
from eva_plugin.rewards.options import SequenceClassificationOptions


class SequenceClassificationReward:
    """Score ``(prompt, response)`` as the model's scalar output.

    The pair is rendered with the reward model's chat template when it has one. Models
    with custom code whose output has a ``score`` field (ArmoRM) use that field; all
    others use ``logits[:, 0]``.
    """

    Options = SequenceClassificationOptions

    @classmethod
    def from_options(cls, path: str, options: SequenceClassificationOptions,
                     context: ModelContext) -> SequenceClassificationReward:
        """The registered factory: the recipe's ``reward_options`` and this process's device."""
        return cls(path, device=context.device, **options.as_dict())

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 8,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_length: int = 4096,
        max_batch_tokens: int | None = 32768,
        device: str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, revision=revision)
        self.model = load_scorer(AutoModelForSequenceClassification, path, self.device, dtype,
                                 trust_remote_code=trust_remote_code,
                                 **loading_options(revision=revision, attn_implementation=attn_implementation))
        # The head reads the last token that is not the model's pad id. A checkpoint without a
        # pad id would read padding (or, with pad = eos, skip a closing eos), so such a model
        # gets, per batch, a pad id that occurs in none of the batch's sequences.
        self.pad_id = self.model.config.pad_token_id
        self.device = str(self.model.device)
        limit = context_limit(self.model, self.tokenizer)  # never past the model's positions
        self.max_length = min(int(max_length), limit) if limit else int(max_length)

    def render(self, conversation: Conversation, response: str) -> str:
        messages = [*conversation, {"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    @torch.no_grad()
    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]:
        flat = [(i, self.render(c, r)) for i, (c, rs) in enumerate(zip(conversations, responses)) for r in rs]
        if not flat:
            return [[] for _ in conversations]
        ids = self.tokenizer([t for _, t in flat], truncation=True, max_length=self.max_length,
                             add_special_tokens=False)["input_ids"]
        values: list[float] = [0.0] * len(flat)
        with bar(len(ids), "scoring", "response") as progress:
            for batch in length_batches([len(x) for x in ids], self.batch_size, self.max_batch_tokens):
                values_of = self._forward([ids[i] for i in batch])
                for i, v in zip(batch, values_of):
                    values[i] = v
                progress.update(len(batch))
        result: list[list[float]] = [[] for _ in conversations]
        for (i, _), v in zip(flat, values):
            result[i].append(v)
        return result

    @torch.no_grad()
    def _forward(self, ids: list[list[int]]) -> list[float]:
        """Scores of one right-padded batch (attention mask on, the head reads the last real token)."""
        pad = self.pad_id if self.pad_id is not None else _unused_id(ids, self.model.config.vocab_size)
        self.model.config.pad_token_id = pad
        width = max(len(x) for x in ids)
        device = self.model.device
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        out = self.model(input_ids=input_ids, attention_mask=mask)
        score = getattr(out, "score", None)
        if score is None:
            score = out.logits[:, 0]
        return score.float().reshape(-1).tolist()

    def close(self) -> None:
        del self.model
        release()


def _unused_id(sequences: list[list[int]], vocab_size: int) -> int:
    used = {i for seq in sequences for i in seq}
    return next(i for i in range(vocab_size - 1, -1, -1) if i not in used)
