"""Secrets and paths (issue 20, class 7): every option name that reads as a secret (any separator, any case:
``api-key``, ``X-API-Key``, ``apiKey``) is refused inline and masked wherever a config is written, URL
user-info is masked, short keys are masked without a hash; ``run_name`` is a plain name; ``report.md``
escapes the folder's name; ``env:`` does not redirect credentials or traffic unless ``env_allow`` says so.

The cases are part of the bad-input catalogue (``catalogue.py``)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from catalogue import Case, Ctx, assert_case, recipe
from test_openai_backend import Server

from eva_plugin import secrets
from eva_plugin.errors import RecipeError
from eva_plugin.recipe import load_recipe

OPENAI = {"backend": "openai", "options": {"base_url": "http://localhost:1/v1"}}


def _openai_option(name: str, value: str) -> dict:
    return {"evolver_model": "gpt-x",
            "evolver_generation": {**OPENAI, "options": {**OPENAI["options"], name: value}}}


CASES: dict[str, Case] = {
    # secret option names: refused inline (they would be written to manifests), whatever their spelling
    "option-api-key-hyphenated": Case(recipe(eva=_openai_option("api-key", "sk-hyphen-0001")),
                                      "evolver_generation.options.api-key: secrets are not read"),
    "option-x-api-key": Case(recipe(eva={"generation": {"options": {"engine_args": {"X-API-Key": "sk-x-0002"}}}}),
                             "options.engine_args.X-API-Key: secrets are not read"),
    "option-api-key-camel-case": Case(recipe(eva={"reward_options": {"apiKey": "sk-camel-0003"}}),
                                      "reward_options.apiKey"),
    "option-short-key": Case(recipe(eva={"evolver_options": {"key": "abc"}}), "evolver_options.key"),
    "option-auth-header": Case(recipe(eva=_openai_option("auth_header", "Basic dXNlcjpwdw==")),
                               "options.auth_header"),
    "option-password-dotted": Case(recipe(eva={"reward_options": {"db.Password": "hunter2"}}),
                                   "reward_options.db.Password"),
    # run_name names a folder under output_dir/runs
    "run-name-parent": Case(recipe(run_name="../../x"), "`run_name` '../../x'"),
    "run-name-slash": Case(recipe(run_name="team/run"), "`run_name` 'team/run'"),
    "run-name-backslash": Case(recipe(run_name="..\\x"), "`run_name`"),
    "run-name-on-the-command-line": Case(recipe("--run_name", "../x"), "`run_name` '../x'"),
    # env: variables that redirect credentials or traffic
    "env-hf-endpoint": Case(recipe(env={"HF_ENDPOINT": "http://evil.example"}), "env.HF_ENDPOINT redirects"),
    "env-hf-home": Case(recipe(env={"HF_HOME": "/tmp/elsewhere"}), "env.HF_HOME redirects"),
    "env-hf-token-path": Case(recipe(env={"HF_TOKEN_PATH": "/tmp/token"}), "env.HF_TOKEN_PATH redirects"),
    "env-https-proxy-lower-case": Case(recipe(env={"https_proxy": "http://proxy:3128"}), "env.https_proxy redirects"),
    "env-all-proxy": Case(recipe(env={"ALL_PROXY": "socks5://proxy:1080"}), "env.ALL_PROXY redirects"),
    "env-no-proxy": Case(recipe(env={"NO_PROXY": "*"}), "env.NO_PROXY redirects"),
    "env-ca-bundle": Case(recipe(env={"REQUESTS_CA_BUNDLE": "/tmp/ca.pem"}), "env.REQUESTS_CA_BUNDLE redirects"),
    "env-wandb-base-url": Case(recipe(env={"WANDB_BASE_URL": "http://evil.example"}), "env.WANDB_BASE_URL redirects"),
    "env-hf-token-even-allowed": Case(recipe(env={"HF_TOKEN": "hf_x"}, env_allow=["HF_TOKEN"]), "env.HF_TOKEN"),
    "env-allow-not-a-list": Case(recipe(env={"HF_HOME": "/tmp/x"}, env_allow="HF_HOME"), "`env_allow`"),
    "env-allow-names-another": Case(recipe(env={"HF_HOME": "/tmp/x"}, env_allow=["HF_ENDPOINT"]),
                                    "env.HF_HOME redirects"),
}
CASES = {name: replace(case, group="20.7") for name, case in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, tmp_path, write_recipe, prompts_file, models, capsys, monkeypatch):
    assert_case(CASES[case], Ctx(tmp_path, write_recipe, prompts_file, models), capsys, monkeypatch)


@pytest.mark.parametrize("name", ["api_key", "api-key", "X-API-Key", "apiKey", "APIKey", "API_KEY", "hf_token",
                                  "HF_TOKEN", "token", "key", "password", "db.Password", "client_secret",
                                  "auth", "auth_header", "Authorization", "credentials", "private-key", "passwd"])
def test_secret_names(name):
    assert secrets.is_secret_key(name)


@pytest.mark.parametrize("name", ["api_key_env", "token_path", "HF_TOKEN_PATH", "secret_name", "pad_token",
                                  "eos_token", "eos_token_id", "max_new_tokens", "max_batch_tokens", "key_column",
                                  "author", "tokenizer", "base_url", "max_length", "batch_size"])
def test_names_that_are_not_secrets(name):
    assert not secrets.is_secret_key(name)


def test_hyphenated_and_camel_case_names_are_masked_in_a_written_config():
    config = {"api-key": "sk-hyphen-424242", "headers": {"X-API-Key": "sk-header-434343"}, "apiKey": "sk-camel-444"}
    written = json.dumps(secrets.redact(config))
    assert "sk-hyphen" not in written and "sk-header" not in written and "sk-camel" not in written
    assert written.count("<redacted") == 3


def test_url_credentials_are_masked():
    clean = secrets.redact({"base_url": "http://alice:s3cr3t-pw@llm.example:8000/v1",
                            "note": "retry https://bob:pw@mirror.example/x and http://plain.example/v1"})
    written = json.dumps(clean)
    assert "s3cr3t-pw" not in written and "alice" not in written and ":pw@" not in written and "bob" not in written
    assert clean["base_url"].endswith("@llm.example:8000/v1") and "http://plain.example/v1" in written
    other = secrets.redact({"base_url": "http://alice:other-pw@llm.example:8000/v1"})
    assert other["base_url"] != clean["base_url"]  # a stage's fingerprint still moves with the credentials
    assert "s3cr3t" not in secrets.redact_text("GET http://alice:s3cr3t-pw@llm.example/v1 failed")


def test_short_keys_are_masked_without_a_hash():
    """A short secret's hash would give it away (few candidates): it becomes ``<redacted>``, in a config and,
    once registered, in text where it stands alone."""
    assert secrets.redact({"api_key": "k3y"}) == {"api_key": "<redacted>"}
    assert secrets.redact({"base_url": "http://u:pw@host/v1"})["base_url"] == "http://<redacted>@host/v1"
    secrets.register("zq7x")
    assert secrets.redact_text("key zq7x refused; zq7xylophone stays") == "key <redacted> refused; zq7xylophone stays"
    assert "Bearer <redacted>" in secrets.redact_text("Authorization: Bearer ab1")


def test_the_evolved_manifest_masks_url_credentials_and_a_short_key(write_recipe, monkeypatch):
    """A run through a server whose address carries user-info, with a 4-character key: neither reaches
    ``iter_1/evolved/manifest.json``."""
    from eva_plugin.dpo import run_recipe

    server = Server()
    try:
        monkeypatch.setenv("EVA_SHORT_KEY", "k9z4")
        url = server.base_url.replace("http://", "http://alice:url-secret-7171@")
        eva = {"iterations": 1, "evolver_model": "gpt-4-0125-preview",
               "evolver_generation": {"backend": "openai", "max_new_tokens": 64,
                                      "options": {"base_url": url, "backoff": 0.01, "api_key_env": "EVA_SHORT_KEY"}}}
        recipe_ = load_recipe(["--config", str(write_recipe(eva=eva))])
        run_recipe(recipe_, stop_after="evolved")
    finally:
        server.close()
    manifest = (recipe_.output_dir / "iter_1" / "evolved" / "manifest.json").read_text()
    assert "url-secret-7171" not in manifest and "alice" not in manifest and "k9z4" not in manifest
    options = json.loads(manifest)["config"]["evolver_generation"]["options"]
    assert options["base_url"].startswith("http://<redacted:") and options["api_key_env"] == "EVA_SHORT_KEY"


def test_env_allow_lets_a_redirecting_variable_through(write_recipe, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", os.environ.get("HF_HOME", str(tmp_path / "before")))
    load_recipe(["--config", str(write_recipe(env={"HF_HOME": str(tmp_path / "hf")}, env_allow=["HF_HOME"]))])
    assert os.environ["HF_HOME"] == str(tmp_path / "hf")


def test_env_names_are_checked_before_any_is_set():
    from eva_plugin.recipe import env_names

    with pytest.raises(RecipeError, match="HF_ENDPOINT"):
        env_names({"OMP_NUM_THREADS": 1, "HF_ENDPOINT": "http://x"}, [])
    assert env_names({"HTTPS_PROXY": "http://p"}, ["https_proxy"]) == {"HTTPS_PROXY"}
    with pytest.raises(RecipeError, match="a recipe may set only"):
        env_names({"LD_PRELOAD": "x"}, ["LD_PRELOAD"])  # the allow-list lifts the redirect rule only


def test_env_may_point_the_process_groups_at_a_network_interface(write_recipe, monkeypatch):
    from eva_plugin.recipe import env_names

    cluster = {"NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "ib0",
               "GLOO_DEVICE_TRANSPORT": "TCP", "gloo_socket_ifname": "eth0"}
    assert env_names(cluster, []) == set()  # allowed as they are, no env_allow needed
    for name in ("GLOO_AUTH_TOKEN", "NCCL_PASSWORD", "GLOO_SECRET", "GLOO_OFFLINE"):  # never a secret nor a switch
        with pytest.raises(RecipeError, match=rf"env.{name}: a recipe may set only CUDA_\*, NCCL_\*, GLOO_\*"):
            env_names({name: "x"}, [name])
    with pytest.raises(RecipeError, match="env.GLOO_HTTP_PROXY redirects"):
        env_names({"GLOO_HTTP_PROXY": "http://p"}, [])
    with pytest.raises(RecipeError, match="a recipe may set only"):
        env_names({"GLOOX_SOCKET_IFNAME": "ib0"}, [])  # the prefix is GLOO_, not GLOO
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "before")  # restored (or removed) after the test
    load_recipe(["--config", str(write_recipe(env={"NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo"}))])
    assert os.environ["NCCL_SOCKET_IFNAME"] == os.environ["GLOO_SOCKET_IFNAME"] == "lo"


def test_report_md_escapes_the_folder_name(tmp_path):
    from eva_plugin.report.write import _markdown, md_code, md_text

    name = "run_[click](javascript:x)\n# *owned* `x`"
    run_dir = tmp_path / name
    page = _markdown(run_dir, {"status": "finished"}, "text ``` with a fence", [])
    heading = page.splitlines()[0]
    assert heading == f"# EVA run report: {md_text(name)}" and "\n# *owned*" not in page
    assert "[click](javascript" not in heading and "\\[click\\]\\(javascript:x\\)" in heading
    assert md_code("a`b") == "`` a`b ``" and "````\ntext ``` with a fence\n````" in page
