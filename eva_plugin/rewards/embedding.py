"""Embedding-similarity reward: cosine between mean-pooled prompt and response embeddings.

Works with any ``AutoModel`` encoder folder, including sentence-transformers folders
(their ``config.json`` and weights sit at the top level).
"""

from __future__ import annotations

import re

import torch

from eva_plugin.batching import context_limit
from eva_plugin.generation import Conversation, last_user_turn
from eva_plugin.modeling import load_scorer, load_tokenizer, pick_device, release
from eva_plugin.options import ModelContext
from eva_plugin.progress import bar
from eva_plugin.rewards.options import EmbeddingOptions


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(max(0, len(words) - 2))} or {tuple(words)}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def degenerate(prompt: str, response: str, min_words: int = 3, max_echo: float = 0.6) -> bool:
    """True for an answer that should never win on similarity: empty, very short, or the prompt echoed.

    Echo: the share of the response's word trigrams that also occur in the prompt is at
    least ``max_echo`` (cosine similarity alone rewards repeating the question).
    """
    words = _words(response)
    if len(words) < min_words:
        return True
    ours = _trigrams(words)
    return len(ours & _trigrams(_words(prompt))) / len(ours) >= max_echo


class EmbeddingSimilarityReward:
    """reward(x, y) = cos(mean_pool(enc(x)), mean_pool(enc(y))); the prompt is the last user turn.

    With ``guard`` on (default) a degenerate answer (see ``degenerate``) gets ``floor``,
    below every cosine, so it can only ever be the rejected response.
    """

    Options = EmbeddingOptions

    @classmethod
    def from_options(cls, path: str, options: EmbeddingOptions, context: ModelContext) -> EmbeddingSimilarityReward:
        """The registered factory: the recipe's ``reward_options`` and this process's device."""
        return cls(path, device=context.device, **options.as_dict())

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        guard: bool = True,
        min_words: int = 3,
        max_echo: float = 0.6,
        floor: float = -1.0,
    ) -> None:
        from transformers import AutoModel

        self.guard, self.min_words, self.max_echo, self.floor = guard, min_words, max_echo, floor
        self.device = pick_device(device)
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.model = load_scorer(AutoModel, path, self.device, dtype, trust_remote_code=trust_remote_code)
        self.device = str(self.model.device)
        limit = context_limit(self.model, self.tokenizer)  # never past the model's positions
        self.max_length = min(int(max_length), limit) if limit else int(max_length)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings, one row per text."""
        rows = []
        with bar(len(texts), "scoring", "text") as progress:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                ).to(self.model.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
                progress.update(len(texts[start : start + self.batch_size]))
        return torch.cat(rows) if rows else torch.zeros(0, device=self.model.device)

    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]:
        prompts = [last_user_turn(c) for c in conversations]
        p = self.embed(prompts)
        flat = [r for rs in responses for r in rs]
        r = self.embed(flat) if flat else torch.zeros(0, p.shape[-1], device=p.device)
        result: list[list[float]] = []
        pos = 0
        for i, rs in enumerate(responses):
            sims = (r[pos : pos + len(rs)] @ p[i]).tolist()
            if self.guard:
                sims = [self.floor if degenerate(prompts[i], text, self.min_words, self.max_echo) else s
                        for text, s in zip(rs, sims)]
            result.append([float(s) for s in sims])
            pos += len(rs)
        return result

    def close(self) -> None:
        del self.model
        release()
