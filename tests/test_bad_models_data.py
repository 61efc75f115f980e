"""Models and data checked before they cost anything (issue 20, class 5): a model folder whose
config parses but whose weights or tokenizer are missing or broken, a policy without a chat
template, custom code without ``trust_remote_code``, a policy context that holds no seed prompt, a
split the data does not have and ``eval_prompts`` that are the seed data are one line before any
model loads; chat rows whose content is a list of parts are read as text; rows without a prompt are
counted in the seed pool's manifest.

The cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from catalogue import Case, Ctx, assert_case, write
from datasets import Dataset, DatasetDict, load_from_disk

from eva_plugin.data import DatasetSpec, load_prompts, load_spec
from eva_plugin.errors import RecipeError

# model_files and content_text are imported by the unit tests only: the benchmark runs these CASES on
# older checkouts too

POOL = "iter_0/seed_pool"


def _copy(ctx: Ctx, role: str) -> Path:
    folder = ctx.tmp / f"{role}-copy"
    shutil.copytree(ctx.models[role], folder)
    return folder


def _model(role: str, damage, **eva) -> callable:
    """A recipe whose ``role`` model (policy or reward) is a copy of the tiny one after ``damage(folder)``."""
    def build(ctx: Ctx) -> list[str]:
        folder = _copy(ctx, role)
        damage(folder)
        if role == "policy":
            path = ctx.write(model_name_or_path=str(folder), eva=eva or None)
        else:
            path = ctx.write(eva={"reward_model": str(folder), **eva})
        return ["--config", str(path)]
    return build


def _remove(*names: str):
    def damage(folder: Path) -> None:
        for name in names:
            (folder / name).unlink()
    return damage


def _write(name: str, data: bytes):
    def damage(folder: Path) -> None:
        (folder / name).write_bytes(data)
    return damage


def _truncate(name: str):
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _config(file: str, **changes):
    def damage(folder: Path) -> None:
        config = json.loads((folder / file).read_text())
        config.update(changes)
        (folder / file).write_text(json.dumps(config))
    return damage


AUTO_MAP = {"AutoModelForCausalLM": "modeling_mine.MineForCausalLM"}


def _data(rows: list[dict], name: str = "rows.jsonl", *extra: str, **entry) -> callable:
    """A recipe whose seed data is ``rows`` (one JSON object a line)."""
    def build(ctx: Ctx) -> list[str]:
        data = write(ctx.tmp, name, "".join(json.dumps(r) + "\n" for r in rows))
        mixture = {"datasets": [{"id": str(data), "split": "train", **entry}], "seed": 0}
        return ["--config", str(ctx.write(dataset_mixture=mixture)), *extra]
    return build


def _disk_without_test(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "saved"
    DatasetDict({"train": Dataset.from_json(str(ctx.prompts))}).save_to_disk(str(folder))
    mixture = {"datasets": [{"id": str(folder), "split": "test"}], "seed": 0}
    return ["--config", str(ctx.write(dataset_mixture=mixture))]


def _eval_prompts(copy: bool) -> callable:
    def build(ctx: Ctx) -> list[str]:
        held = write(ctx.tmp, "held.jsonl", ctx.prompts.read_text()) if copy else ctx.prompts
        return ["--config", str(ctx.write(eva={"eval_prompts": str(held)}))]
    return build


TOPICS = ["the sea", "the moon", "a poem", "energy", "the sky", "an equation"]
PARTS = [{"messages": [{"role": "user", "content": [{"type": "text", "text": f"write about {t}"},
                                                     {"type": "image", "url": "x.png"}]}]} for t in TOPICS]
SOME_WITHOUT_PROMPT = [{"prompt": f"write about {t}"} for t in TOPICS] + [{"prompt": ""}, {"prompt": "  "},
                                                                          {"category": "none"}]


def _pool_is(prompts: list[str]):
    def check(ctx: Ctx) -> None:
        pool = load_from_disk(str(ctx.tmp / "out" / POOL / "data"))
        assert sorted(pool["prompt"]) == sorted(prompts)
    return check


def _pool_counts(dropped: dict):
    def check(ctx: Ctx) -> None:
        manifest = json.loads((ctx.tmp / "out" / POOL / "manifest.json").read_text())
        assert manifest["dropped_rows"] == dropped and manifest["pool_size"] == len(TOPICS)
    return check


G = "20.5"
CASES: dict[str, Case] = {
    # the model folder's files
    "policy-without-weights": Case(_model("policy", _remove("model.safetensors")), "holds no weights"),
    "reward-model-without-weights": Case(_model("reward", _remove("model.safetensors")), "holds no weights"),
    "policy-safetensors-header-too-long": Case(_model("policy", _write("model.safetensors", struct.pack("<Q", 1 << 40)
                                                                       + b"{}")), "broken safetensors header"),
    "policy-safetensors-header-not-json": Case(_model("policy", _write("model.safetensors", struct.pack("<Q", 4)
                                                                       + b"{not")), "header (not JSON)"),
    "policy-safetensors-truncated": Case(_model("policy", _truncate("model.safetensors")), "model.safetensors is "
                                                                                          "truncated"),
    "policy-without-tokenizer": Case(_model("policy", _remove("tokenizer.json")), "holds no tokenizer"),
    "policy-tokenizer-json-broken": Case(_model("policy", _write("tokenizer.json", b'{"version": ')),
                                         "tokenizer.json is not valid JSON"),
    "reward-tokenizer-config-broken": Case(_model("reward", _write("tokenizer_config.json", b"[]")),
                                           "tokenizer_config.json is not a JSON object"),
    "policy-without-chat-template": Case(_model("policy", _remove("chat_template.jinja")), "has no chat template"),
    "policy-custom-code": Case(_model("policy", _config("config.json", auto_map=AUTO_MAP)),
                               "runs its own code (config.json has auto_map)"),
    "reward-custom-code": Case(_model("reward", _config("tokenizer_config.json", auto_map={"AutoTokenizer": ["t.T"]})),
                               "set `eva.reward_options.trust_remote_code: true`"),
    "policy-context-shorter-than-prompts": Case(_model("policy", _config("config.json", max_position_embeddings=4),
                                                       generation={"max_new_tokens": 2},
                                                       evolver_generation={"max_new_tokens": 2}),
                                                "the policy's context is 4 tokens"),
    # the data
    "split-missing-in-a-file": Case(_data(SOME_WITHOUT_PROMPT, split="test"), "has no split 'test'"),
    "split-missing-in-a-saved-dataset": Case(_disk_without_test, "has no split 'test'; its splits are train"),
    "eval-prompts-are-the-seed-file": Case(_eval_prompts(copy=False), "is the seed data itself"),
    "eval-prompts-are-a-copy-of-the-seed-file": Case(_eval_prompts(copy=True), "same content"),
    "chat-content-as-parts": Case(_data(PARTS, "parts.jsonl", "--stop_after", POOL), None,
                                  check=_pool_is([f"write about {t}" for t in TOPICS])),
    "rows-without-prompt-counted": Case(_data(SOME_WITHOUT_PROMPT, "some.jsonl", "--stop_after", POOL), None,
                                        check=_pool_counts({"no_prompt": 3})),
}
CASES = {name: replace(case, group=G) for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


def test_a_trusted_custom_code_model_passes_the_file_checks(tmp_path, models):
    from eva_plugin.checks import check_model_files

    folder = tmp_path / "m"
    shutil.copytree(models["policy"], folder)
    _config("config.json", auto_map=AUTO_MAP)(folder)
    check_model_files(str(folder), "model_name_or_path", trust_remote_code=True, chat=True)
    check_model_files("org/hub-model", "model_name_or_path", trust_remote_code=False)  # nothing local to read


def test_safetensors_headers_are_read_without_the_tensors(tmp_path, models):
    from eva_plugin import model_files

    good = models["policy"] / "model.safetensors"
    assert model_files.safetensors_fault(good) == ""
    short = write(tmp_path, "short.safetensors", b"\x01\x00")
    assert "too short" in model_files.safetensors_fault(short)
    array = write(tmp_path, "list.safetensors", struct.pack("<Q", 2) + b"[]")
    assert "not a JSON object" in model_files.safetensors_fault(array)


def test_tokenizer_files_and_chat_templates(tmp_path, models):
    from eva_plugin import model_files

    assert model_files.tokenizer_fault(models["policy"]) == "" and model_files.has_chat_template(models["policy"])
    write(tmp_path, "tokenizer_config.json", json.dumps({"chat_template": "{{ messages }}"}))
    assert model_files.has_chat_template(tmp_path)
    assert "holds no tokenizer" in model_files.tokenizer_fault(tmp_path)
    write(tmp_path, "tokenizer.model", b"\x00")  # a SentencePiece model is a tokenizer
    assert model_files.tokenizer_fault(tmp_path) == ""


def test_architectures_and_context_come_from_config_json(tmp_path, models):
    from eva_plugin import model_files

    assert model_files.causal_lm_only(models["policy"]) == "LlamaForCausalLM"
    assert model_files.causal_lm_only(models["reward"]) == ""
    assert model_files.context_length(models["policy"]) == 4096
    write(tmp_path, "config.json", json.dumps({"architectures": ["X"], "text_config": {"max_position_embeddings": 64}}))
    assert model_files.context_length(tmp_path) == 64 and model_files.causal_lm_only(tmp_path) == ""
    assert model_files.prompt_token_counts(models["policy"], ["write a short poem", ""])[1] == 0


def test_content_parts_are_text():
    from eva_plugin.data import content_text

    assert content_text([{"type": "text", "text": " a "}, {"type": "image_url", "image_url": "u"}, "b"]) == "a\nb"
    assert content_text([{"type": "image", "url": "x"}]) == "" and content_text(None) == "" and content_text(3) == ""


def test_rows_without_a_prompt_are_counted(tmp_path):
    data = write(tmp_path, "a.jsonl", "".join(json.dumps(r) + "\n" for r in SOME_WITHOUT_PROMPT))
    counts: dict = {}
    assert len(load_prompts([DatasetSpec(str(data))], counts=counts)) == len(TOPICS)
    assert counts["rows_without_prompt"] == 3


def test_a_file_has_only_the_train_split(tmp_path):
    data = write(tmp_path, "a.jsonl", json.dumps({"prompt": "p"}) + "\n")
    assert len(load_spec(DatasetSpec(str(data), split="train[:1]"))) == 1
    with pytest.raises(RecipeError, match="has no split 'train_prefs': set `split: train`"):
        load_spec(DatasetSpec(str(data), split="train_prefs"))
