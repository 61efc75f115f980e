import json

import pytest
from datasets import Dataset, DatasetDict, concatenate_datasets

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


# --- the two mixture dialects on real small local datasets (eva_plugin.dataset_mixture says how they differ) ---

def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def two_sets(tmp_path):
    a = _jsonl(tmp_path / "a" / "a.jsonl", [{"prompt": f"a{i}", "n": i} for i in range(10)])
    b = _jsonl(tmp_path / "b" / "b.jsonl", [{"prompt": f"b{i}", "n": i} for i in range(4)])
    return a, b


def test_handbook_weight_keeps_that_share_of_each_dataset_after_a_seeded_shuffle(two_sets):
    from datasets import load_dataset

    from eva_plugin.data import load_mixture, mixture_parts

    a, b = two_sets
    specs = [DatasetSpec(str(a), weight=0.55), DatasetSpec(str(b), weight=1.0)]
    parts = mixture_parts(specs, seed=3)
    raw_a = load_dataset("json", data_files=str(a), split="train")
    kept_a, kept_b = list(parts[0]["prompt"]), list(parts[1]["prompt"])
    assert kept_a == list(raw_a.shuffle(seed=3).select(range(5))["prompt"])  # int(0.55 * 10) = 5
    assert kept_b == ["b0", "b1", "b2", "b3"]
    mixed = load_mixture(specs, seed=3)  # the Handbook shuffles the concatenation with the same seed
    assert list(mixed["prompt"]) == list(concatenate_datasets(parts).shuffle(seed=3)["prompt"])
    assert list(load_prompts(specs, seed=3)["prompt"]) == kept_a + kept_b


def test_trl_fraction_is_a_share_of_the_mixture_capped_without_oversampling(two_sets):
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig

    from eva_plugin.data import load_mixture, load_prompts
    from eva_plugin.dataset_mixture import trl_row_counts

    a, b = two_sets
    assert trl_row_counts([10, 4], [1, 1]) == [4, 4]  # total = min(10 / .5, 4 / .5) = 8
    assert trl_row_counts([10, 4], [3, 1]) == [10, 3]  # total = min(10 / .75, 4 / .25) = 13.3
    # TRL itself (it reads `json` + data_files) and our reproduction for plain local files agree
    trl = get_dataset(DatasetMixtureConfig(datasets=[
        DatasetConfig(path="json", data_files=str(a), fraction=3), DatasetConfig(path="json", data_files=str(b),
                                                                               fraction=1)]))["train"]
    through_trl = load_mixture([DatasetSpec("json", data_files=str(a), fraction=3),
                                DatasetSpec("json", data_files=str(b), fraction=1)])
    local = load_mixture([DatasetSpec(str(a), fraction=3), DatasetSpec(str(b), fraction=1)])
    expected = [f"a{i}" for i in range(10)] + ["b0", "b1", "b2"]  # first rows, no shuffle
    assert list(trl["prompt"]) == list(through_trl["prompt"]) == list(local["prompt"]) == expected
    prompts = load_prompts([DatasetSpec(str(a), fraction=1), DatasetSpec("json", data_files=str(b), fraction=1)])
    assert list(prompts["prompt"]) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert list(prompts["source"]) == [str(a)] * 4 + ["json"] * 4


def test_save_to_disk_folders_mix_in_the_trl_dialect_too(tmp_path, two_sets):
    from eva_plugin.data import load_mixture

    a, _ = two_sets
    folder = tmp_path / "saved"
    Dataset.from_list([{"prompt": f"s{i}", "n": i} for i in range(6)]).save_to_disk(folder)
    mixed = load_mixture([DatasetSpec(str(a), fraction=1), DatasetSpec(str(folder), fraction=2)])
    assert list(mixed["prompt"]) == ["a0", "a1", "a2", "s0", "s1", "s2", "s3", "s4", "s5"]


@pytest.mark.parametrize("fraction", [None, 1.0])
def test_data_dir_is_passed_on_in_both_dialects(tmp_path, fraction):
    from eva_plugin.data import load_mixture

    root = tmp_path / "repo"
    _jsonl(root / "part1" / "x.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    _jsonl(root / "part2" / "y.jsonl", [{"prompt": "other"}])
    spec = DatasetSpec(str(root), data_dir="part1", fraction=fraction)
    assert sorted(load_mixture([spec])["prompt"]) == ["one", "two"]
    assert sorted(load_mixture([DatasetSpec("json", data_dir=str(root / "part2"))])["prompt"]) == ["other"]
