"""Sampling with ``transformers.generate``: batched, left-padded, prompts sorted by length.

Sampling draws from one random stream per (prompt, sample) (``generation.seeding``), so a
prompt's responses do not depend on the batch it lands in or on the process that runs it.
"""

from __future__ import annotations

import logging

import torch

from eva_plugin.generation import Conversation, Generations, SamplingParams, render_prompt
from eva_plugin.generation.seeding import SeededSampling, prompt_seeds, sample_seed
from eva_plugin.modeling import load_causal_lm, load_tokenizer, pick_device, quantized, release, whole_weights

logger = logging.getLogger(__name__)


class TransformersBackend:
    """Generate with a local causal LM; ``batch_size`` counts prompts per ``generate`` call."""

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 8,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        model_kwargs: dict | None = None,
        **_: object,
    ) -> None:
        """``model_kwargs``: more ``from_pretrained`` keywords (the recipe's revision, attention
        implementation and quantization, ``eva_plugin.modeling.model_kwargs``)."""
        self.model_path = str(model_path)
        self.batch_size = max(1, int(batch_size))
        self.device = pick_device(device)
        model_kwargs = dict(model_kwargs or {})
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code=trust_remote_code,
                                        revision=model_kwargs.get("revision"))
        self.tokenizer.padding_side = "left"
        with whole_weights():
            self.model = load_causal_lm(self.model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                        **model_kwargs)
        if quantized(model_kwargs):  # placed by its device map; a quantized model cannot be moved
            self.device = str(self.model.device)
        else:
            self.model.to(self.device)
        self.model.eval()

    def render(self, conversation: Conversation) -> str:
        """The prompt text the policy sees: its chat template with the generation prompt."""
        return render_prompt(self.tokenizer, conversation)

    @torch.no_grad()
    def generate(
        self, conversations: list[Conversation], n: int, params: SamplingParams, seeds: list[int] | None = None
    ) -> Generations:
        """``n`` responses per conversation; ``seeds`` (one per conversation, default derived from
        ``params.seed`` and the prompt) fix each prompt's random streams."""
        from transformers import LogitsProcessorList

        seeds = seeds if seeds is not None else prompt_seeds(params.seed, conversations)
        texts: list[list[str]] = [[] for _ in conversations]
        finished: list[list[bool]] = [[] for _ in conversations]
        rendered = [self.render(c) for c in conversations]
        lengths = [len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]
        order = sorted(range(len(rendered)), key=lambda i: -lengths[i])
        eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        total_tokens = 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            rows = {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}  # row b*n + j: prompt b, sample j
            processors = LogitsProcessorList()
            if params.temperature > 0:
                row_seeds = [sample_seed(seeds[i], j) for i in idx for j in range(n)]
                processors.append(SeededSampling(row_seeds, params.temperature, params.top_p))
            out = self.model.generate(
                **rows,
                do_sample=False,  # the sampling happens in SeededSampling (Gumbel-max on the argmax)
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=processors,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                synced_gpus=False,  # each process samples its own prompts, never in lockstep
            )
            new = out[:, batch["input_ids"].shape[1] :]
            for row, tokens in enumerate(new):
                keep, done = _until_eos(tokens.tolist(), eos_ids, pad_id)
                total_tokens += len(keep)
                texts[idx[row // n]].append(self.tokenizer.decode(keep, skip_special_tokens=True).strip())
                finished[idx[row // n]].append(done)
            logger.info("generated %d/%d prompts x %d", min(start + self.batch_size, len(order)), len(order), n)
        return Generations(texts, total_tokens, finished)

    def close(self) -> None:
        del self.model
        release()


def _eos_ids(generation_config, tokenizer) -> list[int]:
    ids = generation_config.eos_token_id if generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in ids if i is not None]


def _until_eos(tokens: list[int], eos_ids: list[int], pad_id: int) -> tuple[list[int], bool]:
    """The tokens before the first eos, and whether an eos ended the sequence (else it was cut)."""
    for pos, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[:pos], True
    while tokens and tokens[-1] == pad_id:
        tokens = tokens[:-1]
    return tokens, False
