"""Cost of per-prompt seeded sampling: our Gumbel-max sampler (one random stream per
(prompt, sample), results independent of batching) vs transformers' own multinomial sampling
(one stream for the whole batch), same model, prompts, batch size and token limit.

    python benchmarks/sampling.py                       # the embedded SmolLM2-135M-Instruct
    python benchmarks/sampling.py --model /path/policy  # any local causal LM
Prints generated tokens per second for each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from eva_plugin.generation import SamplingParams
from eva_plugin.generation.transformers_backend import TransformersBackend, _eos_ids, _until_eos

TOPICS = ["the sea", "a python function", "the moon", "remote work", "climate policy", "prime numbers",
          "a short poem", "language learning", "solar energy", "an equation", "bread baking", "chess"]


def native_sampling(backend: TransformersBackend, convs, n: int, params: SamplingParams) -> int:
    """transformers' ``do_sample=True`` over the same length-sorted batches; returns tokens generated."""
    tok = backend.tokenizer
    rendered = sorted((backend.render(c) for c in convs), key=lambda r: -len(tok(r)["input_ids"]))
    eos = _eos_ids(backend.model.generation_config, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    torch.manual_seed(params.seed)
    tokens = 0
    for start in range(0, len(rendered), backend.batch_size):
        batch = tok(rendered[start : start + backend.batch_size], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(backend.device)
        with torch.no_grad():
            out = backend.model.generate(**batch, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                                         top_k=None, max_new_tokens=params.max_new_tokens, num_return_sequences=n,
                                         eos_token_id=eos, pad_token_id=pad)
        for row in out[:, batch["input_ids"].shape[1] :]:
            tokens += len(_until_eos(row.tolist(), eos, pad)[0])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from eva_plugin.embedded import resolve

    backend = TransformersBackend(resolve(args.model), batch_size=args.batch_size)
    convs = [[{"role": "user", "content": f"Write {i % 4 + 1} sentences about {TOPICS[i % len(TOPICS)]}."}]
             for i in range(args.prompts)]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=1)
    backend.generate(convs[:2], 1, params)  # warm-up
    rates = {}
    for name, run in (("seeded (ours)", lambda: backend.generate(convs, args.samples, params).num_tokens),
                      ("native do_sample", lambda: native_sampling(backend, convs, args.samples, params))):
        best = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = run()
            best = max(best, tokens / (time.perf_counter() - start))
        rates[name] = best
        print(f"{name:>17}: {best:8.1f} tokens/s")
    print(f"seeded / native: {rates['seeded (ours)'] / rates['native do_sample']:.2f}x")


if __name__ == "__main__":
    main()
