"""The OpenAI-compatible backend against a small real HTTP server on loopback that misbehaves."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
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
        self.times: dict[str, list[float]] = {}  # when each text was received (monotonic)
        self.answered: dict[str, int] = {}  # request hash (body) → times answered with 200
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # summed over the 200 answers
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.hold_after: int | None = None  # answer this many requests, then hold the rest until `release`
        self.release = threading.Event()
        self.granted = 0  # 200s let out (``may_answer``)
        self.fail: Callable[[dict], bool] | None = None  # a request for which this is true gets a 500
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    outer.times.setdefault(body["messages"][-1]["content"], []).append(time.monotonic())
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    if outer.fail is not None and outer.fail(body):
                        status, reply, extra = 500, {"error": "the model is overloaded"}, {}
                    else:
                        status, reply, extra = (*outer.respond(body, dict(self.headers)), {})[:3]
                    if status == 200 and not outer.may_answer():
                        self.close_connection = True  # held until the client was killed: never answered
                        return
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if status == 200:
                    with outer.lock:
                        key = request_hash(body)
                        outer.answered[key] = outer.answered.get(key, 0) + 1
                        for name in outer.usage:
                            outer.usage[name] += reply["usage"][name]

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def may_answer(self) -> bool:
        """Whether this 200 may go out: always, unless ``hold_after`` were let out already; then the
        request waits for ``release`` and is never answered (its client is killed meanwhile)."""
        with self.lock:
            if self.hold_after is None or self.granted < self.hold_after:
                self.granted += 1
                return True
        self.release.wait(60)
        return False

    def respond(self, body: dict, headers: dict | None = None) -> tuple:
        text = body["messages"][-1]["content"]
        auth = (headers or {}).get("Authorization", "")
        with self.lock:
            self.seen[text] = self.seen.get(text, 0) + 1
            count = self.seen[text]
        time.sleep(0.05)
        if "FAIL_ALWAYS" in text or ("FAIL_ONCE" in text and count == 1):
            return 500, {"error": "boom"}
        if "RATE_LIMITED" in text and count == 1:  # a 429 that says when to come back
            return 429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "1"}
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
        usage = {"prompt_tokens": len(text.split()) + 5, "completion_tokens": 3 * len(choices)}
        return 200, {"choices": choices, "usage": usage}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def request_hash(body: dict) -> str:
    """What identifies a request at the server: its whole JSON body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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


# --- at paper scale: one global limit, Retry-After, a replay cache, usage and cost, a failure limit -----


def test_retry_after_is_read_as_seconds_milliseconds_or_a_date():
    from email.utils import formatdate

    from eva_plugin.generation.pacing import backoff_delay, retry_after, server_delay

    now = 1_700_000_000.0
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"retry-after": "2.5", "retry-after-ms": "1200"}) == 1.2  # OpenAI's finer hint first
    assert retry_after({"Retry-After": formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"Retry-After": formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({}) is None
    for attempt in range(8):  # equal jitter: the upper half of base·2^attempt, capped
        ceiling = min(5.0, 0.5 * 2 ** attempt)
        assert ceiling / 2 <= backoff_delay(attempt, 0.5, 5.0) <= ceiling
    assert 3.0 <= server_delay(3.0, 1.0, 60.0) <= 3.4 and 10.0 <= server_delay(300.0, 1.0, 10.0) <= 11.1


def test_a_429_with_retry_after_holds_every_request_and_500s_are_retried(server):
    backend = OpenAICompatibleBackend("m", base_url=server.base_url, concurrency=2, max_retries=3, backoff=0.01,
                                      prompt_price_per_1k=0.5, completion_price_per_1k=2.0)
    prompts = ["RATE_LIMITED one", "SLOW two", "ok three", "FAIL_ONCE four"]
    gens = backend.generate([conv(p) for p in prompts], 1, SamplingParams())
    assert all(texts[0].startswith("echo 0") for texts in gens.texts)
    limited = server.times["RATE_LIMITED one"]
    assert len(limited) == 2 and limited[1] - limited[0] >= 1.0  # Retry-After: 1 was waited out
    # "ok three" went out after "SLOW two" (0.7 s) on the other worker, yet waited for the same pause
    assert server.times["ok three"][0] - limited[0] >= 1.0
    assert server.seen["FAIL_ONCE four"] == 2
    assert gens.usage["requests"] == 4 and gens.usage["retries"] == 2 and gens.usage["requests_failed"] == 0
    assert gens.usage["prompt_tokens"] == server.usage["prompt_tokens"] > 0
    assert gens.usage["completion_tokens"] == server.usage["completion_tokens"] == gens.num_tokens
    assert gens.usage["cost"] == pytest.approx((server.usage["prompt_tokens"] * 0.5
                                                + server.usage["completion_tokens"] * 2.0) / 1000)


def test_requests_in_flight_never_exceed_the_limit_and_requests_per_minute_spaces_them(server):
    backend = OpenAICompatibleBackend("m", base_url=server.base_url, concurrency=4, backoff=0.01)
    gens = backend.generate([conv(f"prompt {i}") for i in range(24)], 1, SamplingParams())
    assert len(gens.texts) == 24 and server.max_inflight == 4  # the limit, and reached
    assert "cost" not in gens.usage  # no price, no cost

    paced = OpenAICompatibleBackend("m", base_url=server.base_url, concurrency=6, requests_per_minute=300)
    paced.generate([conv(f"paced {i}") for i in range(6)], 1, SamplingParams())
    starts = sorted(server.times[f"paced {i}"][0] for i in range(6))
    assert starts[-1] - starts[0] >= 0.8  # 300 a minute: one every 0.2 s (unpaced, all 6 go out at once)


def test_answered_requests_are_kept_and_replayed_without_the_key(server, monkeypatch, tmp_path):
    from eva_plugin.generation.request_cache import ANSWERS

    monkeypatch.setenv("TEST_KEY", "sk-cache-secret-987654")
    prompts = [conv(p) for p in ("alpha", "beta", "gamma", "NULL content", "FAIL_ALWAYS")]
    params = SamplingParams(temperature=0.5, seed=3)

    def backend():
        made = OpenAICompatibleBackend("m", base_url=server.base_url, api_key_env="TEST_KEY", concurrency=3,
                                       max_retries=0, backoff=0.01)
        made.use_cache(tmp_path / "cache")
        return made

    first = backend().generate(prompts, 2, params)
    sent = len(server.requests)
    cache = tmp_path / "cache" / ANSWERS
    assert len(cache.read_text().splitlines()) == 3  # a null answer and a failure are not kept
    assert "sk-cache-secret-987654" not in cache.read_text()
    with open(cache, "ab") as fh:  # a line cut by a kill
        fh.write(b'{"key": "0123')
    again = backend().generate(prompts, 2, params)
    assert again.texts == first.texts and again.usage["requests_cached"] == 3
    assert len(server.requests) == sent + 2  # only the null answer and the failure were sent again
    assert again.usage["prompt_tokens"] == first.usage["prompt_tokens"]  # what the answers cost, replayed or not
    other = backend().generate(prompts[:1], 2, SamplingParams(temperature=0.5, seed=4))  # another seed: asked
    assert other.usage["requests_cached"] == 0 and len(server.requests) == sent + 3
    assert all(json.loads(line)["key"] for line in cache.read_text().splitlines())  # the cut line was dropped


def test_prices_and_request_rates_do_not_change_stage_fingerprints():
    from eva_plugin.config import GenerationArguments
    from eva_plugin.context import as_dict

    def gen(**options):
        return GenerationArguments(backend="openai", options={"base_url": "http://127.0.0.1:9/v1", **options})

    assert as_dict(gen()) == as_dict(gen(prompt_price_per_1k=0.01, completion_price_per_1k=0.03,
                                         requests_per_minute=500, max_wait=10))
    assert as_dict(gen()) != as_dict(gen(model="another"))


def test_the_failure_rate_is_checked_when_the_recipe_is_read(write_recipe):
    from eva_plugin.config import RecipeError
    from eva_plugin.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"eva.evolver_max_failure_rate must be in \[0, 1\]"):
        load_recipe(["--config", str(write_recipe(eva={"evolver_max_failure_rate": 1.5}))])


def _server_evolver(server, **options) -> dict:
    return {"iterations": 1, "evolver_model": "gpt-4-0125-preview",
            "evolver_generation": {"backend": "openai", "max_new_tokens": 64,
                                   "options": {"base_url": server.base_url, "backoff": 0.01, **options}}}


def test_too_many_failed_evolutions_stop_the_stage_and_a_rerun_sends_only_the_rest(server, write_recipe):
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.errors import EvaError
    from eva_plugin.recipe import load_recipe
    from eva_plugin.report import collect, text_report

    doomed: set[str] = set()

    def first_request_fails(body: dict) -> bool:  # the first request the evolver sends fails, every attempt
        key = request_hash(body)
        if not doomed:
            doomed.add(key)
        return key in doomed

    server.fail = first_request_fails
    eva = _server_evolver(server, max_retries=1, prompt_price_per_1k=0.25, completion_price_per_1k=1.0)
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    with pytest.raises(EvaError) as caught:
        run(recipe, stop_after="evolved")
    message = str(caught.value)
    assert "\n" not in message
    assert "iter_1/evolved: 1 of 3 LLM responses failed (33.3%), above eva.evolver_max_failure_rate 0.05" in message
    assert "last error: HTTP 500: " in message and ".evolved.requests" in message
    out = recipe.output_dir / "iter_1"
    assert (out / "selected" / "manifest.json").exists() and not (out / "evolved").exists()  # finished work kept
    kept = (out / ".evolved.requests" / "answers.jsonl").read_text().splitlines()
    assert len(kept) == 2

    server.fail = None  # the server recovers: the rerun pays only for what was not answered
    run(load_recipe(["--config", str(write_recipe(eva=eva))]), stop_after="evolved")
    assert set(server.answered.values()) == {1}  # no request answered twice
    manifest = json.loads((out / "evolved" / "manifest.json").read_text())
    assert manifest["requests_cached"] == 2 and manifest["requests_failed"] == 0
    assert manifest["requests"] == len(server.answered) == 6  # 3 seeds × 2 chained evolutions
    assert manifest["prompt_tokens"] == server.usage["prompt_tokens"]
    assert manifest["completion_tokens"] == server.usage["completion_tokens"] == manifest["tokens_generated"]
    assert manifest["cost"] == pytest.approx(
        (server.usage["prompt_tokens"] * 0.25 + server.usage["completion_tokens"] * 1.0) / 1000, abs=1e-6)
    report = text_report(collect(recipe.output_dir))
    line = next(x for x in report.splitlines() if x.split()[:2] == ["1", "evolved"])
    assert line.split()[2:] == ["6", "2", "0", "0", str(manifest["prompt_tokens"]),
                                str(manifest["completion_tokens"]), f"{manifest['cost']:.4f}"]


def test_a_run_killed_mid_stage_replays_every_answered_request(server, write_recipe):
    """A real ``eva run`` is killed (SIGKILL) while the evolver's requests are in flight, after the server
    answered 5 of them; the rerun finishes the stage without one request answered twice."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    eva = {**_server_evolver(server, concurrency=2, prompt_price_per_1k=0.5), "subset_fraction": 1.0}
    recipe_file = write_recipe(eva=eva)
    out = load_recipe(["--config", str(recipe_file)]).output_dir / "iter_1"
    cache = out / ".evolved.requests" / "answers.jsonl"
    server.hold_after = 5
    eva_bin = Path(sys.executable).parent / "eva"
    log = recipe_file.with_suffix(".log")
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(eva_bin), "run", str(recipe_file), "--stop_after", "evolved"], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.monotonic() + 300
        while not (cache.exists() and len(cache.read_text().splitlines()) == 5):
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run never had 5 answers in its cache"
            time.sleep(0.05)
        assert server.max_inflight == 2  # the limit, reached: two requests are held at the server now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group, started above
        proc.wait()
        server.release.set()
    assert not (out / "evolved").exists() and len(server.answered) == 5

    server.hold_after = None
    run(load_recipe(["--config", str(recipe_file)]), stop_after="evolved")
    assert set(server.answered.values()) == {1}  # no request answered twice
    manifest = json.loads((out / "evolved" / "manifest.json").read_text())
    assert manifest["requests_cached"] == 5 and manifest["requests"] == len(server.answered) == 24
    assert manifest["prompt_tokens"] == server.usage["prompt_tokens"]
    assert manifest["cost"] == pytest.approx(server.usage["prompt_tokens"] * 0.5 / 1000, abs=1e-6)
    assert len(cache.read_text().splitlines()) == 24
