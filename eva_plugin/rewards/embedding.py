"""Embedding-similarity reward: cosine between mean-pooled prompt and response embeddings.

Works with any ``AutoModel`` encoder folder, including sentence-transformers folders
(their ``config.json`` and weights sit at the top level).
"""

from __future__ import annotations

import torch

from eva_plugin.generation import Conversation
from eva_plugin.modeling import load_tokenizer, release


class EmbeddingSimilarityReward:
    """reward(x, y) = cos(mean_pool(enc(x)), mean_pool(enc(y))); the prompt is the last user turn."""

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        trust_remote_code: bool = False,
        device: str | None = None,
        **_: object,
    ) -> None:
        from transformers import AutoModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings, one row per text."""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows) if rows else torch.zeros(0)

    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]:
        prompts = [next(m["content"] for m in reversed(c) if m["role"] == "user") for c in conversations]
        p = self.embed(prompts)
        flat = [r for rs in responses for r in rs]
        r = self.embed(flat) if flat else torch.zeros(0, p.shape[-1])
        result: list[list[float]] = []
        pos = 0
        for i, rs in enumerate(responses):
            sims = (r[pos : pos + len(rs)] @ p[i]).tolist()
            result.append([float(s) for s in sims])
            pos += len(rs)
        return result

    def close(self) -> None:
        del self.model
        release()
