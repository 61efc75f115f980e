"""Sampling with ``transformers.generate``: batched, left-padded, prompts sorted by length.

Sampling draws from one random stream per (prompt, sample) (``generation.seeding``), so a
prompt's responses do not depend on the batch it lands in or on the process that runs it
(``sampling="native"``: transformers' own sampler instead, faster by a few percent, seeded once
per call, so samples then depend on the batching).

Prompts are grouped into ``generate`` calls by a token budget: a call's rows (prompts x n) times
its longest prompt plus ``max_new_tokens`` stay within ``batch_tokens`` (the KV cache it can
need), with at most ``batch_size`` prompts; a prompt over the budget gets a call of its own.

A prompt whose tokens plus ``max_new_tokens`` exceed the model's context (``context_limit``: its
position embeddings, or a finite ``tokenizer.model_max_length``) is never run: its ``n`` responses
are empty, counted in ``Generations.failed`` and ``Generations.dropped_too_long``, with one warning.
"""

from __future__ import annotations

import logging

import torch

from eva_plugin.batching import context_limit, length_batches
from eva_plugin.generation import BackendBase, Conversation, Generations, SamplingParams, render_prompt
from eva_plugin.generation.options import TransformersOptions
from eva_plugin.generation.seeding import SeededSampling, prompt_seeds, sample_seed
from eva_plugin.modeling import load_causal_lm, load_tokenizer, pick_device, quantized, release, whole_weights
from eva_plugin.options import ModelContext, Options
from eva_plugin.progress import bar

logger = logging.getLogger(__name__)


class TransformersBackend(BackendBase):
    """Generate with a local causal LM.

    A ``generate`` call holds at most ``batch_size`` prompts and at most ``batch_tokens`` padded
    tokens (rows x (longest prompt + max_new_tokens)); whichever is reached first closes the call.
    ``batch_tokens`` None: sized from the free GPU memory and the model's KV cache per token
    (``CPU_BATCH_TOKENS`` on CPU). ``sampling``: ``seeded`` (batch-invariant, ``SeededSampling``)
    or ``native`` (transformers' ``do_sample``, ``torch.manual_seed(params.seed)`` per call).
    """

    Options = TransformersOptions

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 64,
        batch_tokens: int | None = None,
        sampling: str = "seeded",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        """``model_kwargs``: more ``from_pretrained`` keywords (the recipe's revision, attention
        implementation and quantization, ``eva_plugin.modeling.model_kwargs``)."""
        self.model_path = str(model_path)
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of: {', '.join(SAMPLING)} (got {sampling!r})")
        self.batch_size = max(1, int(batch_size))
        self.sampling = sampling
        self.device = pick_device(device)
        model_kwargs = dict(model_kwargs or {})
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code=trust_remote_code,
                                        revision=model_kwargs.get("revision"))
        self.tokenizer.padding_side = "left"
        with whole_weights():
            self.model = load_causal_lm(self.model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                        device=self.device, **model_kwargs)
        if quantized(model_kwargs):  # placed by its device map; a quantized model cannot be moved
            self.device = str(self.model.device)
        else:
            self.model.to(self.device)
        self.model.eval()
        self.batch_tokens = max(1, int(batch_tokens)) if batch_tokens else auto_batch_tokens(self.model, self.device)
        self.context = context_limit(self.model, self.tokenizer)

    @classmethod
    def from_options(cls, model_path: str, options: Options, context: ModelContext) -> TransformersBackend:
        """The registered factory: everything it needs is the run's (``context``)."""
        return cls(model_path, batch_size=context.batch_size, batch_tokens=context.batch_tokens,
                   sampling=context.sampling, dtype=context.dtype, trust_remote_code=context.trust_remote_code,
                   device=context.device, model_kwargs=context.model_kwargs)

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
        eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        total_tokens, done_prompts = 0, 0
        too_long = [i for i, length in enumerate(lengths)
                    if self.context is not None and length + params.max_new_tokens > self.context]
        if too_long:
            logger.warning("%d of %d prompts have more than context %d - max_new_tokens %d tokens; dropped "
                           "(empty responses)", len(too_long), len(lengths), self.context, params.max_new_tokens)
            for i in too_long:
                texts[i], finished[i] = [""] * n, [True] * n
        dropped = set(too_long)
        runs = [i for i in range(len(lengths)) if i not in dropped]
        with bar(len(runs), "sampling", "prompt") as progress:
            for sub in self.batches([lengths[i] for i in runs], n, params.max_new_tokens):
                idx = [runs[j] for j in sub]
                batch = self.tokenizer(
                    [rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.device)
                rows = {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}  # row b*n + j: prompt b, sample j
                processors = LogitsProcessorList()
                sampling: dict = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                if params.temperature > 0 and self.sampling == "native":
                    torch.manual_seed(params.seed)
                    sampling.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
                elif params.temperature > 0:  # greedy decoding on Gumbel-perturbed scores = exact sampling
                    row_seeds = [sample_seed(seeds[i], j) for i in idx for j in range(n)]
                    processors.append(SeededSampling(row_seeds, params.temperature, params.top_p))
                out = self.model.generate(
                    **rows,
                    **sampling,
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
                done_prompts += len(idx)
                logger.info("generated %d/%d prompts x %d", done_prompts, len(rendered), n)
                progress.update(len(idx))
        return Generations(texts, total_tokens, finished, failed=len(too_long) * n, dropped_too_long=len(too_long))

    def batches(self, lengths: list[int], n: int, max_new_tokens: int) -> list[list[int]]:
        """Prompt indices per ``generate`` call, longest prompts first (see the class)."""
        return length_batches([(length + max_new_tokens) * n for length in lengths], self.batch_size,
                              self.batch_tokens)

    def close(self) -> None:
        del self.model
        release()


SAMPLING = ("seeded", "native")
#: The default token budget of a generate call on CPU (or when the KV cache size is unknown).
CPU_BATCH_TOKENS = 16_384
#: The share of free accelerator memory the default budget fills with KV cache (the rest: logits,
#: activations, the allocator's slack).
KV_SHARE = 0.5


def auto_batch_tokens(model, device: str) -> int:
    """The default ``batch_tokens``: on an accelerator, the tokens whose KV cache fills ``KV_SHARE``
    of its free memory (at most 2**20); on CPU, ``CPU_BATCH_TOKENS``."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return CPU_BATCH_TOKENS
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    try:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    except (AttributeError, TypeError, StopIteration, RuntimeError):
        return 262_144
    return int(min(1 << 20, max(CPU_BATCH_TOKENS, KV_SHARE * free // per_token)))


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
