"""Cost of batch-invariant seeded sampling: our counter-based Gumbel-max sampler (noise hashed
from (row seed, step, token id), one vectorised op for all rows) vs transformers' own
multinomial sampling (``sampling="native"``) and vs the former sampler with one
``torch.Generator`` per row; same model, prompts, token budget and token limit.

    python benchmarks/sampling.py                       # the embedded SmolLM2-135M-Instruct
    python benchmarks/sampling.py --model tiny          # a random tiny Llama (eva_plugin.testing)
    python benchmarks/sampling.py --model /path/policy  # any local causal LM
Prints generated tokens per second for each and the ratios to native.

    python benchmarks/sampling.py --backend vllm        # the backends instead, as the loop builds them
    python benchmarks/sampling.py --backend transformers
Prints the build (or engine start) time and generated tokens per second of one backend on the same
prompts, samples and token limit (seeded, the loop's default); run it once per backend.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from unittest import mock

import torch

from eva_plugin.generation import SamplingParams
from eva_plugin.generation import transformers_backend as tb
from eva_plugin.generation.seeding import SeededSampling, top_p_mask

TOPICS = ["the sea", "a python function", "the moon", "remote work", "climate policy", "prime numbers",
          "a short poem", "language learning", "solar energy", "an equation", "bread baking", "chess"]


class PerRowGenerators(SeededSampling):
    """The former sampler: Gumbel noise from one ``torch.Generator`` per row (a launch per row)."""

    def __call__(self, input_ids, scores):
        if getattr(self, "generators", None) is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.row_seeds]
        scores = top_p_mask(scores.float() / self.temperature, self.top_p)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        return scores - torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-per-row", action="store_true", help="skip the former per-row-generator sampler")
    parser.add_argument("--backend", choices=["transformers", "vllm"], help="measure this backend instead")
    args = parser.parse_args()
    if args.backend:
        return backend_rate(args)

    from eva_plugin.embedded import resolve

    if args.model == "tiny":
        from eva_plugin.testing import make_tiny_policy

        model = str(make_tiny_policy(tempfile.mkdtemp()))
    else:
        model = resolve(args.model)
    seeded = tb.TransformersBackend(model, batch_size=args.batch_size, batch_tokens=args.batch_tokens)
    native = tb.TransformersBackend.__new__(tb.TransformersBackend)
    native.__dict__.update(seeded.__dict__, sampling="native")  # the same model and batching
    convs = [[{"role": "user", "content": f"Write {i % 4 + 1} sentences about {TOPICS[i % len(TOPICS)]}."}]
             for i in range(args.prompts)]
    params = SamplingParams(temperature=0.7, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=1)
    print(f"{model} on {seeded.device}, {args.prompts} prompts x {args.samples}, top_p {args.top_p}, "
          f"calls {[len(b) for b in seeded.batches([1] * args.prompts, args.samples, args.max_new_tokens)]}")
    seeded.generate(convs[:2], 1, params)  # warm-up

    def per_row() -> int:
        with mock.patch.object(tb, "SeededSampling", PerRowGenerators):
            return seeded.generate(convs, args.samples, params).num_tokens

    runs = {"seeded (hashed)": lambda: seeded.generate(convs, args.samples, params).num_tokens,
            "native do_sample": lambda: native.generate(convs, args.samples, params).num_tokens}
    if not args.no_per_row:
        runs["seeded (per-row)"] = per_row
    rates = {name: 0.0 for name in runs}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows each alike
        for name, run in runs.items():
            start = time.perf_counter()
            tokens = run()
            rates[name] = max(rates[name], tokens / (time.perf_counter() - start))
    for name, rate in rates.items():
        print(f"{name:>17}: {rate:8.1f} tokens/s  ({rate / rates['native do_sample']:.2f}x native)")


def backend_rate(args) -> None:
    """One backend, built through the plugin manager as the loop builds it, on CPU."""
    from eva_plugin import plugins
    from eva_plugin.embedded import resolve
    from eva_plugin.options import ModelContext

    model = resolve(args.model)
    options = {"max_model_len": 1024} if args.backend == "vllm" else {}
    context = ModelContext(device="cpu", batch_size=args.batch_size, batch_tokens=args.batch_tokens)
    start = time.perf_counter()
    backend = plugins.build("backends", args.backend, model, context=context,
                            options=plugins.parse_options("backends", args.backend, options, "options"))
    built = time.perf_counter() - start
    convs = [[{"role": "user", "content": f"Write {i % 4 + 1} sentences about {TOPICS[i % len(TOPICS)]}."}]
             for i in range(args.prompts)]
    params = SamplingParams(temperature=0.7, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=1)
    backend.generate(convs[:2], 1, params)  # warm-up
    best = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        tokens = backend.generate(convs, args.samples, params).num_tokens
        best = max(best, tokens / (time.perf_counter() - start))
    print(f"{args.backend}: {model}, {args.prompts} prompts x {args.samples}, {args.max_new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}: built in {built:.1f} s, {best:.1f} tokens/s")


if __name__ == "__main__":
    main()
