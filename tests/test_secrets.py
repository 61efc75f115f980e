"""Secrets never reach a manifest or a log; inline keys and unsafe ``env:`` entries are refused."""

from __future__ import annotations

import json
import logging
import os

import pytest
from test_openai_backend import Server, conv  # the loopback chat-completions server

from eva_plugin import secrets
from eva_plugin.config import GenerationArguments
from eva_plugin.context import as_dict
from eva_plugin.errors import RecipeError
from eva_plugin.generation import SamplingParams
from eva_plugin.generation.openai_backend import OpenAICompatibleBackend


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_redact_masks_secret_keys_keeps_the_rest_and_tracks_changes():
    config = {"base_url": "http://x/v1", "api_key_env": "OPENAI_API_KEY", "api_key": "sk-one-1234567",
              "nested": [{"hf_token": "hf_abcdefgh", "pad_token": "<pad>", "max_tokens": 5}]}
    clean = secrets.redact(config)
    assert clean["base_url"] == "http://x/v1" and clean["api_key_env"] == "OPENAI_API_KEY"
    assert clean["api_key"].startswith("<redacted:") and "sk-one" not in json.dumps(clean)
    assert clean["nested"][0] == {"hf_token": secrets.mask("hf_abcdefgh"), "pad_token": "<pad>", "max_tokens": 5}
    assert secrets.redact({**config, "api_key": "sk-two-1234567"})["api_key"] != clean["api_key"]  # fingerprint moves
    secrets.register("registered-secret-value")
    assert "registered-secret-value" not in secrets.redact({"note": "x registered-secret-value y"})["note"]
    assert "qwerty123456" not in secrets.redact_text("header Bearer qwerty123456")


def test_a_generation_config_in_a_manifest_is_redacted():
    gen = GenerationArguments(backend="openai", options={"base_url": "http://x/v1", "api_key": "sk-inline-999999"})
    written = json.dumps(as_dict(gen))
    assert "sk-inline-999999" not in written and "<redacted:" in written and "http://x/v1" in written
    plain = GenerationArguments()
    assert as_dict(plain) == __import__("dataclasses").asdict(plain)  # no secret: fingerprints unchanged


@pytest.mark.parametrize("eva", [
    {"evolver_generation": {"backend": "openai", "options": {"base_url": "http://x/v1", "api_key": "sk-inline"}}},
    {"generation": {"options": {"token": "hf_inline"}}},
    {"reward_options": {"hf_token": "hf_inline"}},
])
def test_an_inline_secret_is_refused_at_parse_time(write_recipe, eva):
    from eva_plugin.recipe import load_recipe

    with pytest.raises(RecipeError, match="api_key_env") as caught:
        load_recipe(["--config", str(write_recipe(eva=eva))])
    assert "\n" not in str(caught.value)


def test_the_evolved_manifest_never_holds_the_key(server, write_recipe, monkeypatch):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    monkeypatch.setenv("EVA_TEST_KEY", "sk-env-key-424242")
    eva = {"iterations": 1, "evolver_model": "gpt-4-0125-preview",
           "evolver_generation": {"backend": "openai", "max_new_tokens": 64,
                                  "options": {"base_url": server.base_url, "backoff": 0.01,
                                              "api_key_env": "EVA_TEST_KEY"}}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    slipped = load_recipe(["--config", str(write_recipe(eva=eva))])
    slipped.eva.evolver_generation.options["api_key"] = "sk-inline-737373"  # as if code slipped one in
    with pytest.raises(RecipeError, match="openai takes no option 'api_key'"):  # never sent, never written
        run(slipped, stop_after="evolved")
    assert not server.headers
    run(recipe, stop_after="evolved")
    manifest = (recipe.output_dir / "iter_1" / "evolved" / "manifest.json").read_text()
    assert "sk-env-key-424242" not in manifest
    options = json.loads(manifest)["config"]["evolver_generation"]["options"]
    assert options["api_key_env"] == "EVA_TEST_KEY"
    assert server.headers and all(h.get("Authorization") == "Bearer sk-env-key-424242" for h in server.headers)


def test_a_server_error_echoing_the_key_is_redacted_in_the_log(server, monkeypatch, caplog):
    monkeypatch.setenv("EVA_TEST_KEY", "sk-echoed-key-515151")
    backend = OpenAICompatibleBackend("m", base_url=server.base_url, api_key_env="EVA_TEST_KEY", backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="eva_plugin.generation.openai_backend"):
        gens = backend.generate([conv("ECHO_KEY please")], 1, SamplingParams())
    assert gens.failed == 1
    assert "bad request with header" in caplog.text and "<redacted:" in caplog.text
    assert "sk-echoed-key-515151" not in caplog.text


def test_redacting_filter_masks_registered_values(caplog):
    secrets.register("filter-secret-000111")
    log = logging.getLogger("eva_plugin.test_secrets")
    log.addFilter(secrets.RedactingFilter())
    with caplog.at_level(logging.INFO, logger="eva_plugin.test_secrets"):
        log.info("the key is %s", "filter-secret-000111")
    assert "filter-secret-000111" not in caplog.text and "<redacted:" in caplog.text


@pytest.mark.parametrize("key", ["HF_HUB_OFFLINE", "HF_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "PATH",
                                 "LD_PRELOAD", "TRANSFORMERS_OFFLINE"])
def test_env_refuses_keys_outside_the_allow_list(write_recipe, key, monkeypatch):
    from eva_plugin.recipe import load_recipe

    monkeypatch.setenv(key, os.environ.get(key, "unchanged"))
    before = os.environ[key]
    with pytest.raises(RecipeError, match=f"env.{key}: a recipe may set only") as caught:
        load_recipe(["--config", str(write_recipe(env={key: "0"}))])
    assert "\n" not in str(caught.value) and os.environ[key] == before


def test_env_sets_allowed_keys(write_recipe, monkeypatch):
    from eva_plugin.recipe import load_recipe

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    load_recipe(["--config", str(write_recipe(env={"TOKENIZERS_PARALLELISM": "true", "OMP_NUM_THREADS": 1}))])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true" and os.environ["OMP_NUM_THREADS"] == "1"


def test_the_run_log_masks_a_registered_secret(capsys):
    """``eva run`` logs through a handler that masks every registered key value."""
    import logging

    from eva_plugin import secrets
    from eva_plugin.dpo import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        setup_logging()
        secrets.register("sk-live-0123456789abcdef")
        logging.getLogger("eva_plugin.test").warning("server said: bad key sk-live-0123456789abcdef")
    finally:
        root.handlers = saved
    out = capsys.readouterr().out
    assert "server said: bad key <redacted:" in out and "sk-live-0123456789abcdef" not in out
