import random

import pytest

from eva_plugin.creator.evolvers import EvolvedPrompt
from eva_plugin.creator.hygiene import Hygiene, MinHashIndex, apply, jaccard, screen, shingles

BUFFER = ["Write a short poem about the sea at night and the moon", "Explain how vaccines train the immune system"]


def test_screen_reasons_in_order():
    new = [
        "Hi there",                                                       # too short
        " ".join(["word"] * 50),                                          # too long (max 40 here)
        "I'm sorry, but I cannot help with that request.",                # refusal
        "As an AI language model I will not write that",                  # refusal
        "write a short poem about the SEA at night and the moon!",        # duplicate of the buffer
        "Write a short poem about the sea at night and the bright moon",  # near duplicate of the buffer
        "Describe three ways volcanoes shape new land over time",         # kept
        "Describe three ways volcanoes shape new land over long time",    # near duplicate of the pool
        "Describe three ways volcanoes shape new land over time.",        # duplicate of the pool
    ]
    reasons = screen(new, BUFFER, Hygiene(min_words=3, max_words=40, near_duplicate=0.7, drop_refusals=True))
    assert reasons == ["too_short", "too_long", "refusal", "refusal", "duplicate", "near_duplicate", None,
                       "near_duplicate", "duplicate"]


def test_threshold_one_keeps_near_duplicates():
    new = ["Write a short poem about the sea at night and the bright moon"]
    assert screen(new, BUFFER, Hygiene(near_duplicate=1.0)) == [None]


def test_by_default_only_exact_duplicates_are_dropped():
    """The paper keeps every evolution: no length bounds, no refusal or near-duplicate filter."""
    new = ["Hi", " ".join(["word"] * 900), "I'm sorry, I can't do that",
           "Write a short poem about the sea at night and the bright moon", BUFFER[1].upper()]
    assert screen(new, BUFFER, Hygiene()) == [None, None, None, None, "duplicate"]


def test_an_evolution_is_never_a_near_duplicate_of_its_own_chain():
    """EvolInstruct adds 10-20 words to a seed: a 33-word seed plus one constraint is very similar to it,
    and each step to the previous one. Only other chains (and other seeds) count."""
    seed = ("Write a detailed travel guide for a first-time visitor to Lisbon that covers the best "
            "neighbourhoods to stay in, how to get around by tram and metro, and three local dishes worth "
            "trying, in a friendly tone")
    other = "Explain how vaccines train the immune system"
    step1 = seed + ", and keep it under 300 words"
    step2 = step1 + " with a packing list"
    rules = Hygiene(near_duplicate=0.7)
    chains = ["lisbon", "lisbon", "vaccines"]
    assert screen([step1, step2, other + " in simple terms for children"], [seed, other], rules, chains,
                  ["lisbon", "vaccines"]) == [None, None, None]
    # the same texts from another chain are near duplicates
    assert screen([step1], [seed], rules, ["rome"], ["lisbon"]) == ["near_duplicate"]


def test_minhash_finds_the_same_pairs_as_exact_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choices(vocab, k=12)) for _ in range(300)]
    docs += [d.replace(d.split()[5], "zz", 1) for d in docs[:60]]  # one word changed
    index = MinHashIndex(0.7, num_perm=64, bands=16)
    grams = [shingles(d) for d in docs]
    found, exact = set(), set()
    for j, g in enumerate(grams):
        found |= {(i, j) for i in index.query(g)}
        exact |= {(i, j) for i in range(j) if jaccard(grams[i], g) >= 0.7}
        index.add(g)
    assert found <= exact  # confirmed by exact Jaccard: no false positives
    assert len(found) >= 0.9 * len(exact) and len(exact) >= 50


def test_apply_only_touches_kept_prompts():
    evolved = [EvolvedPrompt("Explain how vaccines train the immune system", "a", "DEEPENING", 1),
               EvolvedPrompt("", "b", "BREADTH", 1, "empty"),
               EvolvedPrompt("Compare two ways to store solar energy at home", "c", "BREADTH", 1)]
    assert [e.status for e in apply(evolved, BUFFER, Hygiene())] == ["duplicate", "empty", "kept"]


@pytest.mark.parametrize("text", ["I'm sorry, I can't do that", "Sorry, that is not possible", "I cannot comply"])
def test_refusals(text):
    assert screen([text], [], Hygiene(drop_refusals=True)) == ["refusal"]
