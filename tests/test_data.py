import json

import pytest
from datasets import Dataset, DatasetDict

from eva_plugin.config import RecipeError
from eva_plugin.data import load_prompts, prompt_text
from eva_plugin.recipe import DatasetSpec

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a prime"},
        {"role": "assistant", "content": "7"}]


def test_prompt_text_from_string_and_chat_columns():
    assert prompt_text({"prompt": "  hi  "}) == "hi"
    assert prompt_text({"messages": CHAT}) == "name a prime"
    assert prompt_text({"chosen": CHAT, "rejected": CHAT}) == "name a prime"
    assert prompt_text({"question": "why?"}, column="question") == "why?"
    assert prompt_text({"other": 1}) is None


def test_jsonl_parquet_and_save_to_disk_sources(tmp_path):
    rows = [{"prompt": f"p{i}", "category": "math"} for i in range(5)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    parquet = tmp_path / "b.parquet"
    Dataset.from_list([{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]).to_parquet(parquet)
    folder = tmp_path / "c"
    DatasetDict({"train_prefs": Dataset.from_list([{"chosen": CHAT}])}).save_to_disk(folder)
    specs = [DatasetSpec(str(jsonl)), DatasetSpec(str(parquet)), DatasetSpec(str(folder), split="train_prefs")]
    ds = load_prompts(specs)
    assert ds["prompt"] == ["p0", "p1", "p2", "p3", "p4", "q0", "q1", "q2", "name a prime"]
    assert ds["category"][:5] == ["math"] * 5
    assert len(set(ds["prompt_id"])) == len(ds)


def test_weight_subsamples_and_duplicates_are_dropped(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": f"p{i % 10}"}) for i in range(20)))
    assert len(load_prompts([DatasetSpec(str(jsonl))])) == 10
    assert len(load_prompts([DatasetSpec(str(jsonl), weight=0.5)])) <= 10


def test_unreadable_sources_say_what_to_do(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    with pytest.raises(RecipeError, match="cannot read .*x.txt: use one of"):
        load_prompts([DatasetSpec(str(bad))])
    with pytest.raises(RecipeError, match="point the recipe at a local file"):
        load_prompts([DatasetSpec("no-such-org/no-such-dataset")])
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"text": "x"}))
    with pytest.raises(RecipeError, match="set `eva.prompt_column`"):
        load_prompts([DatasetSpec(str(empty))])
