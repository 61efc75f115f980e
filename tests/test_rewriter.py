import pytest

from eva_plugin.solver.rewriter import judge, parse_rewrite, rewrite_instruction, rewrite_pairs, rewrite_template


def test_template_is_distilabels_response_rewriter_with_all_five_methods():
    from distilabel.steps.tasks.evol_quality.utils import MUTATION_TEMPLATES, REWRITE_INSTRUCTION

    template = rewrite_template()
    head, tail = REWRITE_INSTRUCTION.split("{}")
    assert template.startswith(head) and template.endswith(tail)
    methods = template[len(head) : len(template) - len(tail)]
    for single in MUTATION_TEMPLATES.values():
        assert single[len(head) : len(single) - len(tail)] in methods
    filled = rewrite_instruction(template, "Name a prime.", "7")
    assert "<PROMPT>" not in filled and "<RESPONSE>" not in filled and "Name a prime." in filled


@pytest.mark.parametrize(
    ("output", "expected"),
    [("#Rewritten Response#:\nBetter answer.", "Better answer."), ("Rewritten Response: fine", "fine"),
     ("plain text", "plain text"), (None, ""), ("#Rewritten Response#:", "")],
)
def test_parse_rewrite(output, expected):
    assert parse_rewrite(output) == expected


def test_judge_keeps_only_finished_similar_length_rewrites():
    original = "Seven is prime because only 1 and 7 divide it."
    assert judge(original, "Seven is prime: its only divisors are 1 and 7.", True, 1.5) == (
        "Seven is prime: its only divisors are 1 and 7.", "rewritten")
    assert judge(original, "", True, 1.5) == (original, "empty")
    assert judge(original, "Seven is prime because", False, 1.5) == (original, "truncated")
    assert judge(original, "7.", True, 1.5) == (original, "length")
    assert judge(original, original * 3, True, 1.5) == (original, "length")


def test_rewrite_pairs_counts_and_keeps_originals():
    pairs = [{"prompt": [{"role": "user", "content": f"q{i}"}],
              "chosen": [{"role": "assistant", "content": "a fine answer"}],
              "rejected": [{"role": "assistant", "content": "no"}]} for i in range(3)]

    def llm(instructions):
        return ["#Rewritten Response#: a finer answer", "", "x"], [True, True, True]

    rows, counts = rewrite_pairs(pairs, llm, 1.5)
    assert counts == {"rewritten": 1, "empty": 1, "truncated": 0, "length": 1}
    assert [r["chosen"][0]["content"] for r in rows] == ["a finer answer", "a fine answer", "a fine answer"]
    assert all(r["chosen_original"] == "a fine answer" for r in rows)
    assert [r["rewrite_status"] for r in rows] == ["rewritten", "empty", "length"]
