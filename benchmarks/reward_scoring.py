"""Throughput of reward scoring: our length-sorted token-budget batches vs per-prompt padded
batches vs batch size 1, on the same sequence-classification model and texts.

    python benchmarks/reward_scoring.py                    # a tiny random reward model
    python benchmarks/reward_scoring.py --model /path/rm   # any local reward model
Prints responses/second for each strategy and the ratios.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from eva_plugin.batching import length_batches
from eva_plugin.rewards.sequence_classification import SequenceClassificationReward


def texts(prompts: int, samples: int, seed: int = 0) -> tuple[list[list[dict]], list[list[str]]]:
    rng = random.Random(seed)
    words = ["the", "sea", "moon", "river", "answer", "because", "first", "then", "finally", "code",
             "value", "sum", "prime", "list", "step"]
    convs = [[{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(5, 40)))}] for _ in range(prompts)]
    responses = [[" ".join(rng.choices(words, k=rng.randint(2, 200))) for _ in range(samples)] for _ in range(prompts)]
    return convs, responses


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="reward model path (default: a tiny random one)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    path = args.model
    if path is None:
        from eva_plugin.testing import make_tiny_reward_model

        path = str(make_tiny_reward_model(tempfile.mkdtemp() + "/rm"))
    rm = SequenceClassificationReward(path, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    convs, responses = texts(args.prompts, args.samples)
    flat = [rm.render(c, r) for c, rs in zip(convs, responses) for r in rs]
    ids = rm.tokenizer(flat, add_special_tokens=False, truncation=True, max_length=rm.max_length)["input_ids"]
    n = len(ids)

    def ours():
        for batch in length_batches([len(x) for x in ids], args.batch_size, args.max_batch_tokens):
            rm._forward([ids[i] for i in batch])

    def per_prompt():
        for p in range(args.prompts):
            rm._forward(ids[p * args.samples : (p + 1) * args.samples])

    def one_by_one():
        for x in ids:
            rm._forward([x])

    ours()  # warm-up
    results = {name: n / timed(fn) for name, fn in
               [("sorted+budget", ours), ("per-prompt padded", per_prompt), ("batch size 1", one_by_one)]}
    for name, rate in results.items():
        print(f"{name:>18}: {rate:8.1f} responses/s")
    base = results["sorted+budget"]
    print(f"ratio vs per-prompt padded: {base / results['per-prompt padded']:.2f}x; "
          f"vs batch size 1: {base / results['batch size 1']:.2f}x  ({n} responses)")


if __name__ == "__main__":
    main()
