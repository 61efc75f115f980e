"""The bad-input catalogue (issue 13; its harness is ``catalogue.py``): every malformed recipe,
prompt file or command line below ends ``eva_plugin.dpo.main`` with exit code 2 and one line on
stderr (``eva: error: …`` naming the real cause), never a traceback, and before any model or
tokenizer is loaded.

Each case builds its inputs under ``tmp_path`` and returns the command line; ``expect`` is a
fragment the error line must contain (so that the message blames the right thing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from catalogue import Case, Ctx, ModelLoaded, assert_case, install_model_spy
from catalogue import raw as _raw
from catalogue import recipe as _recipe
from catalogue import write as _write

from eva_plugin import dpo


@pytest.fixture
def no_models(monkeypatch):
    install_model_spy(monkeypatch)


def _prompts(tmp_path: Path, lines: list[str] | bytes, name: str = "bad.jsonl") -> Path:
    data = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines)
    return _write(tmp_path, name, data)


def _good_rows(n: int = 12) -> list[str]:
    return [json.dumps({"prompt": f"write about topic number {i}"}) for i in range(n)]


def _with_prompts(content, *extra: str, name: str = "bad.jsonl", **eva):
    def build(ctx):
        path = _prompts(ctx.tmp, content, name)
        return ["--config", str(ctx.write(eva={"prompts": str(path), **eva})), *extra]
    return build


def _mixture(datasets: list[dict] | object):
    def build(ctx):
        entries = datasets(ctx) if callable(datasets) else datasets
        return ["--config", str(ctx.write(dataset_mixture=entries))]
    return build


def _output_dir_is_file(ctx):
    target = _write(ctx.tmp, "occupied", "x")
    return ["--config", str(ctx.write(output_dir=str(target)))]


def _output_dir_under_file(ctx):
    target = _write(ctx.tmp, "afile", "x")
    return ["--config", str(ctx.write(output_dir=str(target / "out")))]


def _stale_seed_pool(ctx):
    first = _prompts(ctx.tmp, _good_rows(), "first.jsonl")
    path = ctx.write(eva={"prompts": str(first)})
    assert dpo.main(["--config", str(path), "--stop_after", "iter_0/seed_pool"]) == 0
    # the seed pool's configuration changes under the finished run
    return ["--config", str(ctx.write(eva={"prompts": str(first), "prompt_column": "prompt"}))]


def _ordered_split_without_prompts(ctx):
    """splits: ordered, and the second dataset holds only prompts the first already has."""
    first = _prompts(ctx.tmp, _good_rows(6), "first.jsonl")
    second = _prompts(ctx.tmp, _good_rows(3), "second.jsonl")
    mixture = {"datasets": [{"id": str(first), **W}, {"id": str(second), **W}], "seed": 0}
    return ["--config", str(ctx.write(creator="none", dataset_mixture=mixture,
                                      eva={"splits": "ordered", "prompts_per_iteration": 2}))]


def _reward_model_folder_without_config(ctx):
    folder = ctx.tmp / "empty_model"
    folder.mkdir()
    return ["--config", str(ctx.write(eva={"reward_model": str(folder)}))]


def _policy_folder_without_config(ctx):
    folder = ctx.tmp / "empty_policy"
    folder.mkdir()
    return ["--config", str(ctx.write(model_name_or_path=str(folder)))]


def _reward_model_is_file(ctx):
    return ["--config", str(ctx.write(eva={"reward_model": str(_write(ctx.tmp, "rm.bin", "x"))}))]


def _legacy_and_unknown(ctx):
    return ["--config", str(ctx.write(max_prompt_length=128, learning_rte=1e-3))]


W = {"weight": 1.0, "split": "train"}

_CASES: dict[str, tuple] = {
    # the recipe file itself
    "yaml-syntax": (_raw("eva:\n  iterations: [1, 2\nseed: 3\n"), "line"),
    "yaml-tab-indent": (_raw("eva:\n\titerations: 2\n"), "line"),
    "yaml-duplicate-colon": (_raw("model_name_or_path: a: b\n"), "line"),
    "yaml-list": (_raw("- a\n- b\n"), "mapping"),
    "yaml-scalar": (_raw("just text\n"), "mapping"),
    "yaml-non-utf8": (_raw(b"seed: 1\nmodel_name_or_path: caf\xe9\n"), "UTF-8"),
    "recipe-missing": (lambda ctx: ["--config", str(ctx.tmp / "nope.yaml")], "not found"),
    "recipe-folder": (lambda ctx: ["--config", str(ctx.tmp)], "folder"),
    # eva: types
    "iterations-word": (_recipe(eva={"iterations": "three"}), "eva.iterations"),
    "iterations-float": (_recipe(eva={"iterations": 2.5}), "eva.iterations"),
    "iterations-bool": (_recipe(eva={"iterations": True}), "eva.iterations"),
    "num-samples-string": (_recipe(eva={"num_samples": "4"}), "eva.num_samples"),
    "cli-iterations-word": (_recipe("--eva.iterations", "three"), "eva.iterations"),
    "cli-iterations-float": (_recipe("--eva.iterations=2.5"), "eva.iterations"),
    "cli-eva-no-value": (_recipe("--eva.iterations"), "--eva.iterations"),
    "cli-eva-bad-yaml": (_recipe("--eva.generation.max_new_tokens", "[1"), "max_new_tokens"),
    "eva-unknown-key": (_recipe(eva={"iteratons": 2}), "iteratons"),
    "generation-string": (_recipe(eva={"generation": "fast"}), "eva.generation"),
    "generation-unknown-key": (_recipe(eva={"generation": {"max_tokens": 3}}), "max_tokens"),
    # eva: ranges
    "iterations-zero": (_recipe(eva={"iterations": 0}), "eva.iterations"),
    "num-samples-one": (_recipe(eva={"num_samples": 1}), "eva.num_samples"),
    "subset-fraction": (_recipe(eva={"subset_fraction": 1.5}), "subset_fraction"),
    "warmup-too-many": (_recipe(eva={"warmup_iterations": 2}), "warmup_iterations"),
    "max-new-tokens-zero": (_recipe(eva={"generation": {"max_new_tokens": 0}}), "max_new_tokens"),
    "max-new-tokens-negative": (_recipe(eva={"generation": {"max_new_tokens": -5}}), "max_new_tokens"),
    "evolver-max-new-tokens-zero": (_recipe(eva={"evolver_generation": {"max_new_tokens": 0}}),
                                    "evolver_generation.max_new_tokens"),
    "batch-size-zero": (_recipe(eva={"generation": {"batch_size": 0}}), "batch_size"),
    "temperature-zero": (_recipe(eva={"generation": {"temperature": 0}}), "temperature"),
    "top-p-zero": (_recipe(eva={"generation": {"top_p": 0}}), "top_p"),
    "sampling-unknown": (_recipe(eva={"generation": {"sampling": "random"}}), "sampling"),
    "reference-unknown": (_recipe(eva={"reference": "latest"}), "reference"),
    "splits-unknown": (_recipe(eva={"splits": "random"}), "eva.splits must be one of: shuffled, ordered"),
    "splits-ordered-too-few-datasets": (_recipe(eva={"splits": "ordered", "creator_input": "fresh"}),
                                        "the run draws 2 seed split(s) (rounds 1, 2) and the mixture has 1 dataset"),
    "splits-ordered-creator-none": (_recipe(creator="none", eva={"splits": "ordered", "iterations": 3}),
                                    "eva.splits: shuffled"),
    "splits-ordered-eva-prompts": (lambda ctx: _recipe(eva={"splits": "ordered", "creator_input": "fresh",
                                                            "prompts": str(ctx.prompts)})(ctx), "eva.prompts replaces"),
    # plugin names, losses, options
    "backend-unknown": (_recipe(eva={"generation": {"backend": "nope"}}), "backend"),
    "proxy-unknown": (_recipe(eva={"proxy": "a_mni"}), "proxy"),
    "evolver-unknown": (_recipe(eva={"evolver": "evol"}), "evolver"),
    "reward-type-unknown": (_recipe(eva={"reward_type": "classifier"}), "reward_type"),
    "evolver-option-unknown": (_recipe(eva={"evolver_options": {"mutashuns": 2}}), "mutashuns"),
    "loss-unknown": (_recipe(eva={"loss": "kto"}), "loss"),
    "loss-args-word": (_recipe(eva={"loss_args": {"beta": "high"}}), "beta"),
    "loss-args-list": (_recipe(eva={"loss_args": [1, 2]}), "loss_args"),
    "loss-args-unknown": (_recipe(eva={"loss": "dpo", "loss_args": {"gamma": 1}}), "gamma"),
    "loss-conflict": (_recipe(eva={"loss": "ipo"}, loss_type="sigmoid"), "loss"),
    "openai-no-base-url": (_recipe(eva={"evolver_generation": {"backend": "openai"}}), "base_url"),
    "reward-batch-size-word": (_recipe(eva={"reward_options": {"batch_size": "big"}}), "reward_options.batch_size"),
    "reward-batch-size-zero": (_recipe(eva={"reward_options": {"batch_size": 0}}), "reward_options.batch_size"),
    "reward-max-length-negative": (_recipe(eva={"reward_options": {"max_length": -1}}), "max_length"),
    "reward-trust-remote-code-word": (_recipe(eva={"reward_options": {"trust_remote_code": "yes"}}),
                                      "trust_remote_code"),
    "reward-options-list": (_recipe(eva={"reward_options": ["batch_size"]}), "reward_options"),
    "gpu-memory-utilization": (_recipe(eva={"generation": {"options": {"gpu_memory_utilization": 1.5}}}),
                               "gpu_memory_utilization"),
    "tensor-parallel-zero": (_recipe(eva={"generation": {"options": {"tensor_parallel_size": 0}}}),
                             "tensor_parallel_size"),
    "max-model-len-word": (_recipe(eva={"generation": {"options": {"max_model_len": "long"}}}), "max_model_len"),
    "openai-concurrency-zero": (_recipe(eva={"evolver_model": "gpt-x", "evolver_generation": {
        "backend": "openai", "options": {"base_url": "http://localhost:1/v1", "concurrency": 0}}}), "concurrency"),
    "openai-timeout-negative": (_recipe(eva={"evolver_model": "gpt-x", "evolver_generation": {
        "backend": "openai", "options": {"base_url": "http://localhost:1/v1", "timeout": -1}}}), "timeout"),
    "openai-retries-word": (_recipe(eva={"evolver_model": "gpt-x", "evolver_generation": {
        "backend": "openai", "options": {"base_url": "http://localhost:1/v1", "max_retries": "many"}}}),
        "max_retries"),
    # model paths
    "creator-unknown": (_recipe(creator="evo"), "creator"),
    "cli-creator-unknown": (_recipe("--creator", "evo"), "creator"),
    "creator-without-reward-model": (_recipe(eva={"reward_model": None}), "reward_model"),
    "policy-missing": (_recipe(model_name_or_path="/no/such/policy"), "model_name_or_path"),
    "policy-without-config": (_policy_folder_without_config, "config.json"),
    "policy-hub-id-offline": (_recipe(model_name_or_path="nobody-xyz/no-such-model"), "HF_HUB_OFFLINE"),
    "policy-empty": (_recipe(model_name_or_path=""), "model_name_or_path"),
    "reward-model-missing": (_recipe(eva={"reward_model": "/no/such/reward"}), "eva.reward_model"),
    "reward-model-without-config": (_reward_model_folder_without_config, "config.json"),
    "reward-model-is-file": (_reward_model_is_file, "eva.reward_model"),
    "reward-model-hub-offline": (_recipe(eva={"reward_model": "nobody-xyz/no-such-rm"}), "eva.reward_model"),
    "evolver-model-missing": (_recipe(eva={"evolver_model": "/no/such/evolver"}), "eva.evolver_model"),
    "judge-model-missing": (_recipe(eva={"judge_model": "/no/such/judge"}), "eva.judge_model"),
    "judge-size-zero": (_recipe(eva={"judge_size": 0}), "eva.judge_size"),
    "judge-backend-unknown": (_recipe(eva={"judge_generation": {"backend": "nope"}}), "judge_generation.backend"),
    "judge-openai-no-base-url": (_recipe(eva={"judge_model": "gpt-x", "judge_generation": {"backend": "openai"}}),
                                 "eva.judge_generation.backend openai needs"),
    "embedded-unknown": (_recipe(eva={"reward_model": "embedded:no-such-model"}), "embedded"),
    # top-level TRL keys and command line
    "top-level-typo": (_recipe(learning_rte=1e-3), "learning_rate"),
    "top-level-unknown": (_recipe(frobnicate=True), "frobnicate"),
    "top-level-typo-after-legacy": (_legacy_and_unknown, "learning_rte"),
    "learning-rate-word": (_recipe(learning_rate="fast"), "learning_rate"),
    "cli-learning-rate-word": (_recipe("--learning_rate", "fast"), "learning_rate"),
    "cli-unknown-flag": (_recipe("--no_such_flag", "1"), "no_such_flag"),
    "env-not-allowed": (_recipe(env={"PATH": "/tmp"}), "env.PATH"),
    "env-list": (_recipe(env=["CUDA_VISIBLE_DEVICES=0"]), "env"),
    "stop-after-typo": (_recipe("--stop_after", "creator_sampels"), "creator_samples"),
    "stop-after-bad-iteration": (_recipe("--stop_after", "iter_9/pairs"), "iter_9"),
    "stop-after-iter0-stage": (_recipe("--stop_after", "iter_0/pairs"), "iter_0/seed_pool"),
    "stop-after-no-value": (_recipe("--stop_after"), "--stop_after"),
    "stop-after-rewritten-off": (_recipe("--stop_after", "rewritten"), "rewritten"),
    # dataset mixture
    "mixture-list": (_mixture([{"id": "x"}]), "dataset_mixture"),
    "mixture-weight-word": (lambda ctx: _mixture({"datasets": [{"id": str(ctx.prompts), **W, "weight": "half"}]})(ctx),
                            "weight"),
    "mixture-weight-zero": (lambda ctx: _mixture({"datasets": [{"id": str(ctx.prompts), **W, "weight": 0}]})(ctx),
                            "weight"),
    "mixture-weight-too-big": (lambda ctx: _mixture({"datasets": [{"id": str(ctx.prompts), **W, "weight": 2}]})(ctx),
                               "weight"),
    "mixture-missing-file": (_mixture({"datasets": [{"id": "/no/such/prompts.jsonl", **W}]}), "/no/such/prompts"),
    "mixture-entry-no-id": (_mixture({"datasets": [{"split": "train"}]}), "id"),
    "mixture-unknown-key": (lambda ctx: _mixture({"datasets": [{"id": str(ctx.prompts), **W, "wieght": 1}]})(ctx),
                            "wieght"),
    "mixture-missing-column": (lambda ctx: _mixture({"datasets": [{"id": str(ctx.prompts), **W,
                                                                   "columns": ["nope"]}]})(ctx), "nope"),
    "no-data": (_recipe(dataset_mixture=None), "data"),
    # prompt files
    "prompts-missing": (_recipe(eva={"prompts": "/no/such/file.jsonl"}), "/no/such/file.jsonl"),
    "prompts-empty": (_with_prompts(b""), "empty"),
    "prompts-blank-lines": (_with_prompts(b"\n\n\n"), "bad.jsonl"),
    "prompts-non-utf8": (_with_prompts(b'{"prompt": "caf\xe9 au lait"}\n'), "UTF-8"),
    "prompts-broken-line": (_with_prompts(_good_rows(2) + ['{"prompt": "oops"'] + _good_rows(2)), "line 3"),
    "prompts-not-json": (_with_prompts(["prompt: a", "prompt: b"]), "line 1"),
    "prompts-no-column": (_with_prompts([json.dumps({"text": f"t{i}"}) for i in range(4)]), "prompt_column"),
    "prompts-wrong-column": (_with_prompts(_good_rows(), prompt_column="instruction"), "instruction"),
    "prompts-all-blank": (_with_prompts([json.dumps({"prompt": "  "}) for _ in range(4)]), "prompt"),
    "prompts-bad-extension": (_with_prompts(_good_rows(), name="bad.txt"), ".txt"),
    "prompts-csv-empty": (_with_prompts(b"", name="bad.csv"), "empty"),
    "prompts-too-few": (_with_prompts(_good_rows(4), prompts_per_iteration=100), "seed pool"),
    "prompts-ordered-split-empty": (_ordered_split_without_prompts, "round 2 trains on dataset 2 of the mixture"),
    "prompts-folder": (lambda ctx: ["--config", str(ctx.write(eva={"prompts": str(ctx.tmp)}))], "cannot load"),
    # output folder
    "output-dir-is-file": (_output_dir_is_file, "output_dir"),
    "output-dir-not-writable": (_output_dir_under_file, "output_dir"),
    "stale-seed-pool": (_stale_seed_pool, "stale"),
}


def _eva_not_mapping(value):
    def build(ctx):
        path = ctx.write()
        cfg = yaml.safe_load(path.read_text())
        cfg["eva"] = value
        path.write_text(yaml.safe_dump(cfg))
        return ["--config", str(path)]
    return build


_CASES["eva-list"] = (_eva_not_mapping([{"iterations": 2}]), "`eva`")
_CASES["eva-string"] = (_eva_not_mapping("iterations=2"), "`eva`")


CASES = {name: Case(build, expect) for name, (build, expect) in _CASES.items()}


def test_the_catalogues_base_recipe_passes_every_check(write_recipe, no_models, capsys):
    """The control: unchanged, the recipe the cases alter is accepted and the run goes on until it
    loads its first model, so each case's refusal is caused by what that case changed."""
    with pytest.raises(ModelLoaded):
        dpo.main(["--config", str(write_recipe())])
    assert "eva: error" not in capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


def test_duplicate_prompts_are_counted(tmp_path, write_recipe, no_models, capsys, caplog):
    rows = _good_rows(6) + _good_rows(3)  # 3 repeated
    path = _prompts(tmp_path, rows, "dups.jsonl")
    recipe = write_recipe(eva={"prompts": str(path)})
    import logging

    with caplog.at_level(logging.INFO):
        assert dpo.main(["--config", str(recipe), "--stop_after", "iter_0/seed_pool"]) == 0
    manifest = (tmp_path / "out" / "iter_0" / "seed_pool" / "manifest.json").read_text()
    assert '"duplicates_dropped": 3' in manifest, manifest
    assert any("3 duplicate" in r.getMessage() for r in caplog.records)


def test_hub_id_accepted_when_online(tmp_path, write_recipe, monkeypatch):
    from eva_plugin.checks import check_model_path

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    check_model_path("org/some-model", "model_name_or_path")  # resolved by the hub when it loads


def test_server_model_name_accepted_with_openai(write_recipe, no_models):
    from eva_plugin.recipe import load_recipe

    path = write_recipe(eva={"evolver_model": "meta-llama/Llama-3-8B-Instruct", "evolver_generation": {
        "backend": "openai", "options": {"base_url": "http://localhost:1/v1"}}})
    recipe = load_recipe(["--config", str(path)])
    assert recipe.eva.evolver_model == "meta-llama/Llama-3-8B-Instruct"


def test_legacy_key_is_still_a_note(write_recipe):
    from eva_plugin.recipe import load_recipe

    recipe = load_recipe(["--config", str(write_recipe(max_prompt_length=128, hub_model_revision="main"))])
    assert any("max_prompt_length" in n for n in recipe.notes)


def test_an_output_dir_in_a_folder_the_process_cannot_write_is_one_line(tmp_path, write_recipe, no_models, capsys,
                                                                         monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes everywhere: the folder answers as it would to anyone else
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            False if Path(path) == locked and mode & os.W_OK else access(path, mode, **kw)))
    try:
        assert dpo.main(["--config", str(write_recipe(output_dir=str(locked / "out")))]) == 2
        err = capsys.readouterr().err
        assert f"eva: error: `output_dir` {locked / 'out'} is not writable ({locked} denies it)" in err, err
    finally:
        locked.chmod(0o700)
