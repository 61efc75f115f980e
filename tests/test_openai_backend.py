"""The OpenAI-compatible backend against a small real HTTP server on loopback that misbehaves."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eva_plugin.generation import SamplingParams
from eva_plugin.generation.openai_backend import OpenAICompatibleBackend
from eva_plugin.generation.seeding import prompt_seeds

TOPICS = ["photosynthesis", "plate tectonics", "compound interest", "binary search", "the water cycle",
          "supply and demand", "vaccination", "recursion", "ocean tides", "inflation", "lunar phases", "TCP"]


class Server:
    """Chat-completions on 127.0.0.1; the last user message decides how it behaves."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.seen: dict[str, int] = {}
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.counter = itertools.count()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    status, reply = outer.respond(body, dict(self.headers))
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def respond(self, body: dict, headers: dict | None = None) -> tuple[int, dict]:
        text = body["messages"][-1]["content"]
        auth = (headers or {}).get("Authorization", "")
        with self.lock:
            self.seen[text] = self.seen.get(text, 0) + 1
            count = self.seen[text]
        time.sleep(0.05)
        if "FAIL_ALWAYS" in text or ("FAIL_ONCE" in text and count == 1):
            return 500, {"error": "boom"}
        if body.get("model") == "denied" or "DENY" in text:  # echoes the key, as some servers do
            return 401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}.\nSee the docs."}}
        if "ECHO_KEY" in text:
            return 400, {"error": f"bad request with header {auth}"}
        if "BAD" in text:
            return 400, {"error": "bad request"}
        if "SLOW" in text:
            time.sleep(0.6)
        n = body.get("n", 1)
        if "NULL" in text:
            choices = [{"message": {"role": "assistant", "content": None}, "finish_reason": "stop"}] * n
        elif "ONE_AT_A_TIME" in text:
            choices = [{"message": {"content": f"single {next(self.counter)}"}, "finish_reason": "stop"}]
        elif "#Given Response#" in text:  # the rewriter: same text, upper case (same length)
            original = text.split("#Given Response#:\n", 1)[1].split("\n#Rewritten Response#", 1)[0]
            choices = [{"message": {"content": "#Rewritten Response#:\n" + original.upper()},
                        "finish_reason": "stop"} for _ in range(n)]
        elif "Reply with the rating only" in text:  # the judge: a rating that test_judge.py can recompute
            choices = [{"message": {"content": judge_reply(text)}, "finish_reason": "stop"} for _ in range(n)]
        elif "#The Given Prompt#" in text or "#Given Prompt#" in text:
            choices = [{"message": {"content": f"#Rewritten Prompt#:\nExplain {TOPICS[next(self.counter) % 12]} "
                                               "with a worked example."}, "finish_reason": "stop"}
                       for _ in range(n)]
        else:
            reason = "length" if "CUT" in text else "stop"
            choices = [{"message": {"content": f"echo {i}: {text[:12]}"}, "finish_reason": reason} for i in range(n)]
        return 200, {"choices": choices, "usage": {"completion_tokens": 3 * len(choices)}}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def judge_reply(request: str) -> str:
    """What the loopback judge answers: complexity = 1 + words of the rated prompt mod 5, quality =
    1 + its characters mod 5, in a different wording each; prompts holding "tell" get no rating."""
    prompt = request.split("Request:\n", 1)[1].rsplit("\n\nReply with the rating only", 1)[0]
    if "tell" in prompt.lower():
        return "I cannot rate this."
    if request.startswith("How difficult"):
        return f"Rating: {1 + len(prompt.split()) % 5}/5"
    return f"**{1 + len(prompt) % 5}**"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_failures_cost_one_prompt_not_the_batch(server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sekrit")
    backend = OpenAICompatibleBackend("served-model", base_url=server.base_url, api_key_env="TEST_KEY",
                                      concurrency=3, timeout=0.3, max_retries=2, backoff=0.01)
    prompts = ["ok one", "FAIL_ONCE please", "FAIL_ALWAYS", "NULL content", "CUT short", "SLOW reply",
               "BAD input", "ok two"]
    params = SamplingParams(temperature=0.5, top_p=0.8, max_new_tokens=7, seed=11)
    gens = backend.generate([conv(p) for p in prompts], 2, params)
    texts = dict(zip(prompts, gens.texts))
    assert texts["ok one"] == ["echo 0: ok one", "echo 1: ok one"]
    assert texts["FAIL_ONCE please"][0].startswith("echo 0")  # retried after one 500
    assert texts["FAIL_ALWAYS"] == ["", ""] and texts["SLOW reply"] == ["", ""] and texts["BAD input"] == ["", ""]
    assert texts["NULL content"] == ["", ""]
    assert texts["ok two"] == ["echo 0: ok two", "echo 1: ok two"]
    assert dict(zip(prompts, gens.finished))["CUT short"] == [False, False]
    assert dict(zip(prompts, gens.finished))["ok one"] == [True, True]
    assert gens.failed == 2 * 4  # FAIL_ALWAYS, SLOW, BAD and the two null choices
    assert server.seen["FAIL_ALWAYS"] == 3 and server.seen["BAD input"] == 1  # retries only where they help
    assert server.max_inflight <= 3
    first = next(r for r in server.requests if r["messages"][-1]["content"] == "ok one")
    assert (first["model"], first["n"], first["temperature"], first["top_p"], first["max_tokens"]) == (
        "served-model", 2, 0.5, 0.8, 7)
    assert first["seed"] == prompt_seeds(11, [conv(p) for p in prompts])[0]  # seeded per prompt
    assert all(h.get("Authorization") == "Bearer sekrit" for h in server.headers)
    assert gens.num_tokens > 0


def test_servers_that_ignore_n_are_asked_again(server):
    backend = OpenAICompatibleBackend("m", base_url=server.base_url, backoff=0.01)
    gens = backend.generate([conv("ONE_AT_A_TIME")], 3, SamplingParams())
    assert len(gens.texts[0]) == 3 and len(set(gens.texts[0])) == 3
    seeds = [r["seed"] for r in server.requests if r["messages"][-1]["content"] == "ONE_AT_A_TIME"]
    first = prompt_seeds(SamplingParams().seed, [conv("ONE_AT_A_TIME")])[0]
    assert seeds == [first, first + 1, first + 2]  # asked again with a moved-on seed, not the same one
    assert server.seen["ONE_AT_A_TIME"] == 3


def test_openai_backend_needs_a_base_url_at_parse_time(write_recipe):
    from eva_plugin.config import RecipeError
    from eva_plugin.recipe import load_recipe

    with pytest.raises(RecipeError, match="options.base_url"):
        load_recipe(["--config", str(write_recipe(eva={"evolver_generation": {"backend": "openai"}}))])


def test_the_loop_evolves_through_a_server(server, write_recipe):
    from datasets import load_from_disk

    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    eva = {"iterations": 1, "evolver_model": "gpt-4-0125-preview",
           "evolver_generation": {"backend": "openai", "max_new_tokens": 64,
                                  "options": {"base_url": server.base_url, "backoff": 0.01}}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    run(recipe, stop_after="prompts")
    evolved = load_from_disk(str(recipe.output_dir / "iter_1" / "evolved" / "data"))
    assert set(evolved["status"]) == {"kept"}
    assert all(p.startswith("Explain ") and p.endswith("with a worked example.") for p in evolved["prompt"])
    assert {r["model"] for r in server.requests} == {"gpt-4-0125-preview"}
    prompts = load_from_disk(str(recipe.output_dir / "iter_1" / "prompts" / "data"))
    assert "evolved" in set(prompts["origin"])


def test_the_rewriter_rewrites_chosen_responses_through_a_server(server, write_recipe):
    import json as _json

    from datasets import load_from_disk

    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe
    from eva_plugin.stage_list import round_stages

    eva = {"iterations": 1, "rewriter": True, "evolver_model": "gpt-4-0125-preview",
           "evolver_generation": {"backend": "openai", "options": {"base_url": server.base_url, "backoff": 0.01}}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    run(recipe)
    out = recipe.output_dir / "iter_1"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*round_stages("eva", rewriting=True), "manifest.json"])
    rewritten = load_from_disk(str(out / "rewritten" / "data"))
    manifest = _json.loads((out / "rewritten" / "manifest.json").read_text())
    assert sum(manifest[s] for s in ("rewritten", "empty", "truncated", "length")) == len(rewritten)
    done = [r for r in rewritten if r["rewrite_status"] == "rewritten"]
    assert done and all(r["chosen"][0]["content"] == r["chosen_original"].strip().upper() for r in done)
    policy = _json.loads((out / "policy" / "manifest.json").read_text())
    assert policy["config"]["rewritten"] == manifest["fingerprint"]  # training used the rewritten pairs


def test_a_401_stops_the_call_with_the_servers_message_and_no_key(server, monkeypatch):
    from eva_plugin.errors import EvaError
    from eva_plugin.generation.openai_backend import ServerDenied

    monkeypatch.setenv("TEST_KEY", "sk-wrong-key-123456")
    backend = OpenAICompatibleBackend("m", base_url=server.base_url, api_key_env="TEST_KEY", concurrency=2,
                                      max_retries=3, backoff=0.01)
    prompts = [f"DENY {i}" for i in range(12)]
    with pytest.raises(ServerDenied) as caught:
        backend.generate([conv(p) for p in prompts], 2, SamplingParams())
    message = str(caught.value)
    assert isinstance(caught.value, EvaError) and "\n" not in message
    assert "HTTP 401" in message and "Incorrect API key provided" in message and "$TEST_KEY" in message
    assert "sk-wrong-key-123456" not in message and "<redacted:" in message
    assert sum(server.seen.values()) <= 3  # never retried; the other prompts are not sent once refused


def test_the_loop_stops_on_a_refusing_evolver_server(server, write_recipe):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.errors import EvaError
    from eva_plugin.recipe import load_recipe

    eva = {"iterations": 1, "evolver_model": "denied",
           "evolver_generation": {"backend": "openai", "options": {"base_url": server.base_url, "backoff": 0.01}}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    with pytest.raises(EvaError, match="HTTP 401.*Incorrect API key provided"):
        run(recipe, stop_after="prompts")
    assert not (recipe.output_dir / "iter_1" / "evolved" / "manifest.json").exists()
