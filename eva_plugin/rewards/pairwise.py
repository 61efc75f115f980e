"""Pair-wise preference models as rewards (RLHF Workflow's preference model, PairRM-style).

A causal LM reads "[CONTEXT] x [RESPONSE A] a [RESPONSE B] b" as a user turn and answers
"A" or "B"; P(a beats b) is the softmax of the "A" and "B" token logits at the answer
position. A response's reward is its mean win probability against the other samples of
the same prompt. Position bias is cancelled by judging each pair in both orders and
averaging (``order: both``, default) or, at half the cost, in one seeded random order
(``order: random``). Comparisons run in length-sorted batches under a token budget.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from eva_plugin.batching import context_limit, length_batches
from eva_plugin.generation import Conversation, last_user_turn
from eva_plugin.modeling import load_scorer, load_tokenizer, loading_options, pick_device, release
from eva_plugin.options import ModelContext
from eva_plugin.progress import bar
from eva_plugin.rewards.options import PAIRWISE_TEMPLATE, PairwiseOptions

logger = logging.getLogger(__name__)

class PairwisePreferenceReward:
    """Rewards from a pair-wise judge: each response's mean win probability against the prompt's others."""

    Options = PairwiseOptions

    @classmethod
    def from_options(cls, path: str, options: PairwiseOptions, context: ModelContext) -> PairwisePreferenceReward:
        """The registered factory: the recipe's ``reward_options`` and this process's device."""
        return cls(path, device=context.device, **options.as_dict())

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 8,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        order: str = "both",
        max_batch_tokens: int | None = 32768,
        seed: int = 0,
        template: str = PAIRWISE_TEMPLATE,
        labels: tuple[str, str] = ("A", "B"),
        device: str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if order not in ("random", "both"):
            raise ValueError(f"unknown pairwise order {order!r}; known: random, both")
        self.device = pick_device(device)
        self.batch_size, self.order, self.template = max(1, int(batch_size)), order, template
        self.max_batch_tokens = max_batch_tokens
        self.rng = np.random.default_rng(seed)
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, revision=revision)
        self.tokenizer.padding_side = "left"
        from transformers import AutoModelForCausalLM

        self.model = load_scorer(AutoModelForCausalLM, path, self.device, dtype, trust_remote_code=trust_remote_code,
                                 **loading_options(revision=revision, attn_implementation=attn_implementation))
        self.device = str(self.model.device)
        self.max_length = context_limit(self.model, self.tokenizer)
        ids = [self.tokenizer.encode(label, add_special_tokens=False) for label in labels]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"labels {labels} must be single tokens for this tokenizer")
        self.label_ids = [i[0] for i in ids]
        self.keep_last = True

    def render(self, context: str, a: str, b: str) -> str:
        turn = [{"role": "user", "content": self.template.format(context=context, a=a, b=b)}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        return turn[0]["content"]

    @torch.no_grad()
    def prob_first_wins(self, texts: list[str]) -> list[float]:
        """P("A") against P("B") at the answer position, per rendered comparison."""
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self.max_length and any(len(x) > self.max_length for x in ids):
            # keep the end: the answer position and the responses; the start of the context goes
            logger.warning("%d of %d comparisons are longer than the judge's %d tokens; their start is cut",
                           sum(len(x) > self.max_length for x in ids), len(ids), self.max_length)
            ids = [x[-self.max_length:] for x in ids]
        out = [0.0] * len(texts)
        with bar(len(ids), "scoring", "comparison") as progress:
            for batch in length_batches([len(x) for x in ids], self.batch_size, self.max_batch_tokens):
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]},
                                         return_tensors="pt").to(self.model.device)
                logits = self.answer_logits(enc)
                labels = torch.tensor(self.label_ids, device=logits.device)
                logits = logits.index_select(-1, labels).float()
                for i, p in zip(batch, torch.softmax(logits, -1)[:, 0].tolist()):
                    out[i] = p
                progress.update(len(batch))
        return out

    def answer_logits(self, enc) -> torch.Tensor:
        """[B, V] logits at the answer position. Only that position is computed (``logits_to_keep=1``):
        a [B, L, V] tensor for every one of the n(n − 1) comparisons would be gigabytes at a 128K
        vocabulary. A model whose own code does not take the keyword gets the full forward."""
        if self.keep_last:
            try:
                return self.model(**enc, logits_to_keep=1).logits[:, -1]
            except TypeError as err:
                if "logits_to_keep" not in str(err):
                    raise
                self.keep_last = False
                logger.info("the pairwise judge's forward takes no logits_to_keep; all positions are computed")
        return self.model(**enc).logits[:, -1]

    def score(self, conversations: list[Conversation], responses: list[list[str]]) -> list[list[float]]:
        jobs: list[tuple[int, int, int, bool]] = []  # prompt, i, j, i shown first
        texts: list[str] = []
        for p, (conv, rs) in enumerate(zip(conversations, responses)):
            context = last_user_turn(conv)
            for i, j in itertools.combinations(range(len(rs)), 2):
                orders = [True, False] if self.order == "both" else [bool(self.rng.integers(2))]
                for i_first in orders:
                    a, b = (rs[i], rs[j]) if i_first else (rs[j], rs[i])
                    jobs.append((p, i, j, i_first))
                    texts.append(self.render(context, a, b))
        probs = self.prob_first_wins(texts)
        wins = [np.zeros((len(rs), len(rs))) for rs in responses]
        counts = [np.zeros((len(rs), len(rs))) for rs in responses]
        for (p, i, j, i_first), prob in zip(jobs, probs):
            p_i = prob if i_first else 1.0 - prob
            wins[p][i, j] += p_i
            wins[p][j, i] += 1.0 - p_i
            counts[p][i, j] += 1
            counts[p][j, i] += 1
        rewards = []
        for w, c, rs in zip(wins, counts, responses):
            n = len(rs)
            if n < 2:
                rewards.append([0.5] * n)
                continue
            rate = np.divide(w, c, out=np.zeros_like(w), where=c > 0)
            rewards.append([float(rate[i].sum() / (n - 1)) for i in range(n)])
        return rewards

    def close(self) -> None:
        del self.model
        release()
