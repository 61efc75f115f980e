import re

import numpy as np
import pytest

from eva_plugin import plugins
from eva_plugin.creator.evolvers import (
    Completion,
    EvolInstruct,
    evolved_status,
    parse_evolved,
)
from eva_plugin.options import EvolverContext


def llm_of(texts_for):
    """An evolver's ``generate`` from a function that returns texts (None: a failed call)."""
    return lambda instructions: [t if t is None or isinstance(t, Completion) else Completion(t)
                                 for t in texts_for(instructions)]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Explain tides, citing two lunar phases.", "Explain tides, citing two lunar phases."),
        ("#Rewritten Prompt#:\nExplain tides in 3 steps.", "Explain tides in 3 steps."),
        ("**Rewritten Prompt:** Explain tides in 3 steps.", "Explain tides in 3 steps."),
        ("#Created Prompt#:\n  Describe a rare tide.  ", "Describe a rare tide."),
        ("Sure!\n#Rewritten Prompt#: first\n#Rewritten Prompt#: second", "second"),
        ('"Quoted prompt"', "Quoted prompt"),
        ("", None),
        ("   \n ", None),
        ("#Rewritten Prompt#:", None),
        (None, None),
        ("New instructions for the robot: pick up the cube", "New instructions for the robot: pick up the cube"),
        ("Evolved prompting techniques: list three", "Evolved prompting techniques: list three"),
        ("Write a story.\nNew prompt ideas are welcome", "Write a story.\nNew prompt ideas are welcome"),
        ("Rewritten Prompt#Rewritten Prompt#: list two", "list two"),
        ("#Rewritten Prompt#:\nList two tides.\n\nThis rewritten prompt adds a constraint.", "List two tides."),
        ("List two tide types.\n\nExplanation: I asked for a number.", "List two tide types."),
        ("List two tide types.\n\n**Note:** I made it shorter.", "List two tide types."),
        ("Write a poem about the sea.\n\nNote: it must rhyme and have 4 lines.",
         "Write a poem about the sea.\n\nNote: it must rhyme and have 4 lines."),
        ("Plan a trip.\n\nNote: I am a beginner, so keep the budget under $500.\n\nInclude a table.",
         "Plan a trip.\n\nNote: I am a beginner, so keep the budget under $500.\n\nInclude a table."),
        ("Write a poem about the sea.\n\nNote: it must rhyme.\n\nNote: I added the rhyme constraint.",
         "Write a poem about the sea.\n\nNote: it must rhyme."),
        ("Write a poem.\n\nNote: the original prompt had no length limit.", "Write a poem."),
        ("Write a poem.\n\nNote: it must rhyme.\n\nThis rewritten prompt adds a rhyme.",
         "Write a poem.\n\nNote: it must rhyme."),
        ("Write a poem.\n\n(Note: compared with #The Given Prompt#, it asks for rhyme.)", "Write a poem."),
        ("Plan a trip.\n\nI have added a budget constraint.", "Plan a trip."),
        ("Plan a trip.\n\nInclude a budget table.", "Plan a trip.\n\nInclude a budget table."),
        ("### New Prompt:\nCompare two rivers.", "Compare two rivers."),
        ('Chop onions twice." This rewriting adds 10 words.', "Chop onions twice."),
        ("Write a memo. Note the deadline.", "Write a memo. Note the deadline."),
        ("Plan a trip. This revised version asks for a budget.", "Plan a trip."),
        ("Describe the app. The new version must run offline.", "Describe the app. The new version must run offline."),
        ("Plan a trip.\n\nThe new prompt asks for a budget.", "Plan a trip."),
    ],
)
def test_parse_evolved(output, expected):
    assert parse_evolved(output) == expected


@pytest.mark.parametrize(
    ("parsed", "status"),
    [(None, "empty"), ("", "empty"), ("Explain tides.", "kept"),
     ("Rewrite #The Given Prompt# into a harder one", "unusable"), ("the rewritten prompt is below", "unusable")],
)
def test_evolved_status(parsed, status):
    assert evolved_status(parsed) == status


def test_evol_instruct_sends_distilabels_templates_and_chains_steps():
    from distilabel.steps.tasks.evol_instruct.utils import MUTATION_TEMPLATES

    sent: list[list[str]] = []

    def llm(instructions):
        sent.append(instructions)
        return [f"v{len(sent)} of prompt {i}" for i in range(len(instructions))]

    seeds = [{"prompt_id": "a", "prompt": "write a poem"}, {"prompt_id": "b", "prompt": "sum 2 and 3"}]
    evolver = EvolInstruct(num_evolutions=3)
    out = evolver.evolve(seeds, llm_of(llm), np.random.default_rng(0))
    assert len(sent) == 3 and all(len(batch) == 2 for batch in sent)  # one batched call per step
    assert set(evolver.mutations) == set(MUTATION_TEMPLATES)
    # step 1 mutates the seed; step 2 mutates step 1's output (chained, as distilabel does)
    for e, instruction in zip(out[:2], sent[0]):
        seed = next(s for s in seeds if s["prompt_id"] == e.parent_id)
        assert instruction == MUTATION_TEMPLATES[e.mutation].replace("<PROMPT>", seed["prompt"])
    assert sent[1][0] == MUTATION_TEMPLATES[out[2].mutation].replace("<PROMPT>", "v1 of prompt 0")
    assert [(e.parent_id, e.step) for e in out] == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert all(e.status == "kept" for e in out)


def test_mutation_choice_is_seeded_and_covers_all_templates():
    def llm(instructions):
        return ["x"] * len(instructions)

    seeds = [{"prompt_id": str(i), "prompt": f"p{i}"} for i in range(50)]
    a = [e.mutation for e in EvolInstruct(2).evolve(seeds, llm_of(llm), np.random.default_rng(7))]
    b = [e.mutation for e in EvolInstruct(2).evolve(seeds, llm_of(llm), np.random.default_rng(7))]
    assert a == b
    assert set(a) == {"BREADTH", "CONCRETIZING", "CONSTRAINTS", "DEEPENING", "INCREASED_REASONING_STEPS"}


def test_failed_outputs_are_counted_and_the_chain_continues_from_the_last_good_prompt():
    replies = iter([[None], [""], ["third"]])
    sent = []

    def llm(instructions):
        sent.append(instructions[0])
        return next(replies)

    out = EvolInstruct(3).evolve([{"prompt_id": "a", "prompt": "seed text"}], llm_of(llm), np.random.default_rng(0))
    assert [e.status for e in out] == ["empty", "empty", "kept"]
    assert "seed text" in sent[2]


def test_evolving_leaves_the_global_rng_alone():
    from eva_plugin.creator.evolvers import EvolQuality

    state = np.random.get_state()[1].copy()
    seeds = [{"prompt_id": str(i), "prompt": f"p{i}"} for i in range(5)]
    EvolQuality(2).evolve(seeds, llm_of(lambda xs: ["new text here"] * len(xs)), np.random.default_rng(1))
    assert (np.random.get_state()[1] == state).all()


def test_truncated_outputs_are_never_kept():
    def llm(instructions):
        return [Completion("Explain tides and then also the", truncated=True)] * len(instructions)

    out = EvolInstruct(1).evolve([{"prompt_id": "a", "prompt": "tides"}], llm_of(llm), np.random.default_rng(0))
    assert [(e.status, e.raw) for e in out] == [("truncated", "Explain tides and then also the")]


def test_multi_shot_keeps_the_first_usable_candidate():
    replies = {0: [Completion("cut off", truncated=True), "#The Given Prompt# again", "Explain tides to a sailor.",
                   "later one"],
               1: ["", None, "", ""]}
    calls = []

    def llm(instructions):
        calls.append(instructions)
        return replies[len(calls) - 1]

    seeds = [{"prompt_id": "a", "prompt": "tides"}]
    out = EvolInstruct(2, candidates=4).evolve(seeds, llm_of(llm), np.random.default_rng(0))
    assert len(calls[0]) == 4 and len(set(calls[0])) == 1  # four samples of one instruction
    assert [(e.status, e.prompt) for e in out] == [("kept", "Explain tides to a sailor."), ("empty", "")]
    assert "Explain tides to a sailor." in calls[1][0]  # the chain continues from the kept rewrite


def test_every_registered_evolver_evolves_seeds_the_way_the_loop_calls_it():
    """Each built-in evolver, built as the evolved stage builds it (``plugins.build`` with its parsed
    options and an ``EvolverContext``), turns the seeds into rows that name their seed: an
    LLM evolver sends each seed in an instruction and keeps the LLM's text; one that never calls the
    LLM hands the seeds on."""
    from eva_plugin.creator.evolvers import STATUSES

    seeds = [{"prompt_id": "a", "prompt": "Explain how tides work."}, {"prompt_id": "b", "prompt": "Sum 2 and 3."}]
    reply = "Describe how the moon pulls on the oceans in three steps."
    builtins = sorted(n for n, e in plugins.registry("evolvers").items() if e.source == plugins.BUILTIN)
    assert builtins
    for name in builtins:
        sent: list[str] = []

        def llm(instructions, sent=sent):
            sent.extend(instructions)
            return [reply] * len(instructions)

        evolver = plugins.build("evolvers", name, options=plugins.parse_options("evolvers", name, {}, "w"),
                                context=EvolverContext(num_evolutions=2, candidates=1))
        rows = [e.as_row() for e in evolver.evolve(seeds, llm_of(llm), np.random.default_rng(0))]
        assert {r["parent_id"] for r in rows} == {"a", "b"} and {r["status"] for r in rows} <= set(STATUSES), name
        kept = {r["prompt"] for r in rows if r["status"] == "kept"}
        if sent:
            assert all(any(s["prompt"] in i for i in sent) for s in seeds), name
            assert kept == {reply}, name
        else:
            assert kept == {s["prompt"] for s in seeds}, name


def _record(replies=None):
    sent = []

    def llm(instructions):
        sent.extend(instructions)
        return [replies or f"variant {len(sent)}" for _ in instructions]

    return sent, llm


def test_evol_complexity_sends_distilabels_in_depth_templates_only():
    from distilabel.steps.tasks.evol_instruct.evol_complexity.utils import MUTATION_TEMPLATES

    from eva_plugin.creator.evolvers import EvolComplexity

    sent, llm = _record()
    seeds = [{"prompt_id": str(i), "prompt": f"seed {i}"} for i in range(20)]
    out = EvolComplexity(1).evolve(seeds, llm_of(llm), np.random.default_rng(0))
    assert {e.mutation for e in out} == set(MUTATION_TEMPLATES) and "BREADTH" not in MUTATION_TEMPLATES
    for e, instruction in zip(out, sent):
        seed = next(s["prompt"] for s in seeds if s["prompt_id"] == e.parent_id)
        assert instruction == MUTATION_TEMPLATES[e.mutation].replace("<PROMPT>", seed)


def test_evol_quality_puts_distilabels_quality_methods_into_the_prompt_rewriter():
    from distilabel.steps.tasks.evol_instruct.utils import REWRITE_INSTRUCTION
    from distilabel.steps.tasks.evol_quality.utils import MUTATION_TEMPLATES as QUALITY

    from eva_plugin.creator.evolvers import EvolQuality

    sent, llm = _record()
    out = EvolQuality(1).evolve([{"prompt_id": "a", "prompt": "plan a picnic"}], llm_of(llm), np.random.default_rng(3))
    from distilabel.steps.tasks.evol_quality.utils import REWRITE_INSTRUCTION as QUALITY_FRAME

    qhead, qtail = QUALITY_FRAME.split("{}")
    method = QUALITY[out[0].mutation][len(qhead) : len(QUALITY[out[0].mutation]) - len(qtail)]
    assert method and method in QUALITY[out[0].mutation]
    prompt_method = re.sub(r"\b[Rr]esponse\b", "Prompt", method)
    assert sent[0] == REWRITE_INSTRUCTION.format(prompt_method).replace("<PROMPT>", "plan a picnic")


def test_self_instruct_renders_distilabels_template_and_reads_one_query_per_line():
    from distilabel.steps.tasks.self_instruct import SelfInstruct as Distilabel
    from jinja2 import Template

    from eva_plugin.creator.self_instruct import SelfInstruct, paper_criteria

    reply = "1. Describe a tide pool at dawn.\n\n- List two animals found in tide pools?\nWhy do tides change daily?"
    sent, llm = _record(reply)
    out = SelfInstruct(3).evolve([{"prompt_id": "a", "prompt": "Explain tides."}], llm_of(llm),
                                 np.random.default_rng(0))
    assert [(e.prompt, e.step, e.status) for e in out] == [
        ("Describe a tide pool at dawn.", 1, "kept"), ("List two animals found in tide pools?", 2, "kept"),
        ("Why do tides change daily?", 3, "kept")]
    assert len(sent) == 1  # independent variants from one call
    d = Distilabel.model_fields
    expected = Template(__import__("importlib").resources.files("distilabel").joinpath(
        "steps/tasks/templates/self-instruct.jinja2").read_text()).render(
        input="Explain tides.", num_instructions=3, application_description=d["application_description"].default,
        criteria_for_query_generation=paper_criteria(d["criteria_for_query_generation"].default))
    assert sent[0] == expected
    # distilabel's criteria, with the 1-2 sentence limit changed into a length like the seed's
    assert "1-2 sentences" not in sent[0] and "as long and as detailed as the context" in sent[0]


def test_feedback_context_precedes_the_template():
    from eva_plugin.creator.evolvers import mutation_templates

    sent, llm = _record()
    seed = {"prompt_id": "a", "prompt": "sum 2 and 3",
            "feedback": {"best": "5", "best_reward": 0.9, "worst": "23", "worst_reward": -0.4}}
    out = EvolInstruct(1).evolve([seed], llm_of(llm), np.random.default_rng(0))
    template = mutation_templates()[out[0].mutation].replace("<PROMPT>", "sum 2 and 3")
    assert sent[0].endswith(template)
    preamble = sent[0][: -len(template)]
    assert "(reward 0.900)" in preamble and "\n5\n" in preamble and "(reward -0.400)" in preamble


def test_evol_mutations_option_draws_from_the_named_templates_only():
    from eva_plugin.creator.evolvers import mutation_templates

    sent, llm = _record()
    seeds = [{"prompt_id": str(i), "prompt": f"seed {i}"} for i in range(8)]
    out = EvolInstruct(2, mutations=["CONSTRAINTS", "DEEPENING"]).evolve(seeds, llm_of(llm), np.random.default_rng(0))
    assert {e.mutation for e in out} == {"CONSTRAINTS", "DEEPENING"}
    templates = mutation_templates()
    assert sent[0] == templates[out[0].mutation].replace("<PROMPT>", "seed 0")


@pytest.mark.parametrize("mutations", [["BREADTH"], "CONSTRAINTS", []])
def test_evol_mutations_option_rejects_unknown_names_listing_the_known_ones(mutations):
    from eva_plugin.creator.evolvers import EvolComplexity
    from eva_plugin.errors import RecipeError

    with pytest.raises(RecipeError, match="evol_complexity.*CONCRETIZING, CONSTRAINTS, DEEPENING"):
        EvolComplexity(1, mutations=mutations)


def test_builtin_evolvers_refuse_unknown_options():
    from eva_plugin.creator.self_instruct import SelfInstruct

    with pytest.raises(TypeError):
        EvolInstruct(1, temperature=0.3)
    with pytest.raises(TypeError):
        SelfInstruct(1, mutations=["CONSTRAINTS"])


@pytest.mark.parametrize("criteria", ["Ask about one fact only.", ""])
def test_self_instruct_criteria_option_overrides_ours(criteria):
    from distilabel.steps.tasks.self_instruct import SelfInstruct as Distilabel

    from eva_plugin.creator.self_instruct import LENGTH_CRITERION, SelfInstruct

    default = Distilabel.model_fields["criteria_for_query_generation"].default
    evolver = SelfInstruct(2, criteria=criteria)
    expected = criteria or default  # "" = distilabel's default criteria
    assert evolver.criteria == expected
    sent, llm = _record("one\ntwo")
    evolver.evolve([{"prompt_id": "a", "prompt": "Explain tides."}], llm_of(llm), np.random.default_rng(0))
    assert LENGTH_CRITERION not in sent[0] and expected in sent[0]
    assert (default in sent[0]) == (criteria == "")


def test_self_instruct_default_criteria_are_distilabels_with_the_authors_length_change():
    """The paper: distilabel 1.4.1's SelfInstruct with the instruction on conciseness modified so variants are
    about as long as the seed. Every other default line is distilabel's, read at run time."""
    from distilabel.steps.tasks.self_instruct import SelfInstruct as Distilabel

    from eva_plugin.creator.self_instruct import LENGTH_CRITERION, SelfInstruct, paper_criteria

    default = Distilabel.model_fields["criteria_for_query_generation"].default
    sent, llm = _record("one\ntwo")
    SelfInstruct(2).evolve([{"prompt_id": "a", "prompt": "Explain tides."}], llm_of(llm), np.random.default_rng(0))
    kept = [line for line in default.splitlines() if "1-2 sentences" not in line]
    assert len(kept) == len(default.splitlines()) - 1 and all(line in sent[0] for line in kept)
    assert LENGTH_CRITERION in sent[0] and "1-2 sentences" not in sent[0]
    # the replaced line sits where distilabel's was; a distilabel without such a line gets ours appended
    assert paper_criteria("a\nlimited to 1-2 sentences.\nb") == f"a\n{LENGTH_CRITERION}\nb"
    assert paper_criteria("a\nb") == f"a\nb\n{LENGTH_CRITERION}"


def test_an_evolution_that_echoes_its_instruction_is_unusable():
    """A small evolver sometimes answers with a sentence of the template instead of a prompt."""
    from eva_plugin.creator.evolvers import EvolInstruct, mutation_templates

    echo = "more complicated, you should remove the non-text parts such as the table and code."
    fine = "A recipe needs 3 eggs for 12 cookies; how many eggs for 36 cookies, and how many for 50?"
    evolver = EvolInstruct(num_evolutions=1, mutations=["CONCRETIZING"])
    assert "non-text parts such as the table" in mutation_templates()["CONCRETIZING"]
    for reply, status in ((echo, "unusable"), (fine, "kept")):
        out = evolver.evolve([{"prompt_id": "a", "prompt": "A recipe needs 3 eggs for 12 cookies."}],
                             llm_of(lambda instructions, r=reply: [r] * len(instructions)), np.random.default_rng(0))
        assert [e.status for e in out] == [status]


def test_a_note_that_is_part_of_the_task_is_kept():
    """A constraint in a Note paragraph ("the new version must …") is the task's, not talk about the rewrite."""
    task = "Write a sorting function for a linked list.\n\nNote: The new version must run in O(n log n)."
    assert parse_evolved(task) == task
    assert parse_evolved("Write a poem.\n\nNote: I have added a constraint on rhyme.") == "Write a poem."
    assert parse_evolved("Write a poem.\n\nNote: the rewritten version adds rhyme.") == "Write a poem."


def test_given_prompt_in_a_task_is_not_template_text():
    assert evolved_status("Explain the given prompt engineering technique.") == "kept"
    assert evolved_status("#Given Prompt#: write a poem") == "unusable"
    assert evolved_status("Here is the rewritten prompt: write a poem") == "unusable"
