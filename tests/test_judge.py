"""The LLM judge of prompt complexity and quality (``iter_<t>/judged``, the paper's §E.1)."""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest
from datasets import load_from_disk
from test_openai_backend import Server, judge_reply

from eva_plugin import cli
from eva_plugin.dpo import run_recipe as run
from eva_plugin.judge import RUBRICS, parse_rating
from eva_plugin.recipe import load_recipe


@pytest.mark.parametrize("reply, rating", [("4", 4.0), ("Rating: 3/5", 3.0), ("**5**", 5.0), ("2.", 2.0),
                                           ("I'd say 4 out of 5", 4.0), ("0", None), ("7", None), ("3.5", None),
                                           ("10", None), ("", None), ("no idea", None)])
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_judge_rates_the_seed_pool_and_every_x_t(server, write_recipe, capsys):
    eva = {"iterations": 2, "num_evolutions": 1, "judge_model": "judge-llm", "judge_size": 6,
           "judge_generation": {"backend": "openai", "options": {"base_url": server.base_url, "backoff": 0.01}}}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    run(recipe)
    out = recipe.output_dir
    assert {r["model"] for r in server.requests} == {"judge-llm"}
    assert {r["temperature"] for r in server.requests} == {0.0}  # greedy by default
    for t in (0, 1, 2):
        rows = load_from_disk(str(out / f"iter_{t}" / "judged" / "data"))
        manifest = json.loads((out / f"iter_{t}" / "judged" / "manifest.json").read_text())
        rated = "seed_pool" if t == 0 else "prompts"
        prompts = set(load_from_disk(str(out / f"iter_{t}" / rated / "data"))["prompt_id"])
        assert len(rows) == manifest["prompts"] == 6 and set(rows["prompt_id"]) <= prompts
        for scale in ("complexity", "quality"):
            want = [parse_rating(judge_reply(RUBRICS[scale].format(prompt=p))) for p in rows["prompt"]]
            assert rows[scale] == want
            rated = [w for w in want if w is not None]
            assert manifest[f"mean_{scale}"] == pytest.approx(statistics.mean(rated))
            assert manifest[f"stderr_{scale}"] == pytest.approx(statistics.stdev(rated) / math.sqrt(len(rated)))
            assert manifest[f"unrated_{scale}"] == len(want) - len(rated)
        by_origin = manifest["by_origin"]
        assert sum(o["prompts"] for o in by_origin.values()) == 6
        for origin, o in by_origin.items():
            mine = [c for c, g in zip(rows["complexity"], rows["origin"]) if g == origin and c is not None]
            assert o["complexity"] == (pytest.approx(statistics.mean(mine)) if mine else None)
    assert "evolved" in json.loads((out / "iter_2" / "judged" / "manifest.json").read_text())["by_origin"]

    requests = len(server.requests)
    run(load_recipe(["--config", str(write_recipe(eva=eva))]))  # resume: nothing judged again
    assert len(server.requests) == requests

    assert cli.main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"prompts of\s+complexity\s+stderr\s+quality", text)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["judged"]["2"]["mean_quality"] == json.loads(
        (out / "iter_2" / "judged" / "manifest.json").read_text())["mean_quality"]


def test_judge_off_by_default_writes_no_stage(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "num_evolutions": 1}))])
    assert recipe.eva.judge_model is None
    run(recipe, stop_after="prompts")
    assert not (recipe.output_dir / "iter_0" / "judged").exists()
