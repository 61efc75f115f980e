"""The stage runtime on one process: run once, skip when done, refuse stale, stop after, clean leftovers."""

from __future__ import annotations

import json

import pytest
from accelerate import PartialState
from datasets import Dataset

from eva_plugin.artifacts import StageResult, StageStore
from eva_plugin.errors import EvaError, StaleArtifactError, StopAfterStage
from eva_plugin.runtime import EVERY, SHARED, StageRuntime


def runtime(tmp_path, **kwargs) -> tuple[StageRuntime, list[str]]:
    lines: list[str] = []
    rt = StageRuntime(StageStore(tmp_path / "out", overwrite_stale=kwargs.pop("overwrite_stale", False)),
                      PartialState(), log=lines.append, **kwargs)
    rt.begin(1)
    return rt, lines


def rows(n: int):
    calls: list[int] = []

    def work(tmp):
        calls.append(n)
        return StageResult(Dataset.from_dict({"x": list(range(n))}), {"made": n})

    return work, calls


def test_a_stage_runs_once_and_its_manifest_is_recorded(tmp_path):
    rt, lines = runtime(tmp_path)
    work, calls = rows(3)
    first = rt.run_stage(1, "scores", {"a": 1}, work)
    again = rt.run_stage(1, "scores", {"a": 1}, work)
    assert calls == [3] and first["x"] == again["x"] == [0, 1, 2]
    manifest = json.loads((tmp_path / "out" / "iter_1" / "scores" / "manifest.json").read_text())
    assert manifest["rows"] == 3 and manifest["made"] == 3 and manifest["config"] == {"a": 1}
    assert rt.reports[-1].manifests["scores"]["fingerprint"] == manifest["fingerprint"]
    assert lines[-1] == "[iter 1] scores: done before, skipped"


def test_a_changed_config_is_refused_in_one_line_naming_the_fix(tmp_path):
    rt, _ = runtime(tmp_path)
    rt.run_stage(1, "scores", {"proxy": "a_min"}, rows(2)[0])
    with pytest.raises(StaleArtifactError) as err:
        rt.run_stage(1, "scores", {"proxy": "variance"}, rows(2)[0])
    message = str(err.value)
    assert isinstance(err.value, EvaError) and "\n" not in message
    assert "iter_1/scores was made with a different config (changed: proxy)" in message
    assert "--overwrite_stale" in message


def test_overwrite_stale_rebuilds_and_keeps_the_old_artifact_aside(tmp_path):
    rt, _ = runtime(tmp_path)
    rt.run_stage(1, "scores", {"proxy": "a_min"}, rows(2)[0])
    rt, _ = runtime(tmp_path, overwrite_stale=True)
    assert len(rt.run_stage(1, "scores", {"proxy": "variance"}, rows(5)[0])) == 5
    assert len(list((tmp_path / "out" / "iter_1").glob(".scores.stale-*"))) == 1


def test_leftovers_of_a_killed_stage_are_removed_when_it_runs_again(tmp_path):
    leftover = tmp_path / "out" / "iter_1" / ".policy.tmp-dead"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")

    def train(tmp):
        (tmp / "model.safetensors").write_bytes(b"weights")
        return StageResult(None, {"rows": 4}, note="trained on 4 pairs")

    rt, lines = runtime(tmp_path)
    assert rt.run_stage(1, "policy", {"lr": 1}, train, EVERY) is None
    assert not leftover.exists()
    final = tmp_path / "out" / "iter_1" / "policy"
    assert (final / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((final / "manifest.json").read_text())["rows"] == 4
    assert lines[-1].startswith("[iter 1] policy: trained on 4 pairs in ")


def test_shared_stages_record_the_items_each_process_took(tmp_path):
    rt, _ = runtime(tmp_path)

    def work(tmp):
        results, _ = rt.shards.share(5, lambda idx: ([i * 2 for i in idx], {}))
        return StageResult(Dataset.from_dict({"y": results}))

    assert rt.run_stage(1, "creator_samples", {}, work, SHARED)["y"] == [0, 2, 4, 6, 8]
    assert rt.reports[-1].manifests["creator_samples"]["items_per_process"] == [5]


def test_stop_after_ends_the_run_after_the_stage_but_not_when_it_was_skipped(tmp_path):
    rt, _ = runtime(tmp_path, stop_after="scores")
    with pytest.raises(StopAfterStage, match="iter_1/scores"):
        rt.run_stage(1, "scores", {}, rows(1)[0])
    rt, _ = runtime(tmp_path, stop_after="scores")
    rt.run_stage(1, "scores", {}, rows(1)[0])  # done before: the rerun moves on
    rt, _ = runtime(tmp_path, stop_after="iter_1/pairs")
    rt.run_stage(1, "scores", {}, rows(1)[0])
    with pytest.raises(StopAfterStage, match="iter_1/pairs"):
        rt.run_stage(1, "pairs", {}, rows(1)[0])


def test_a_failing_stage_leaves_no_artifact(tmp_path):
    rt, _ = runtime(tmp_path)

    def broken(tmp):
        (tmp / "partial.bin").write_bytes(b"x")
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        rt.run_stage(1, "evolved", {}, broken, SHARED)
    folder = tmp_path / "out" / "iter_1"
    assert not (folder / "evolved").exists() and not list(folder.glob(".evolved.tmp-*"))


def test_rates_divide_the_counters_by_the_seconds():
    from eva_plugin.artifacts import rates

    assert rates({"tokens_generated": 500, "scored": 40}, 2.0) == {"tokens_per_second": 250.0,
                                                                   "responses_per_second": 20.0}
    assert rates({"tokens_generated": 0, "rows": 3}, 2.0) == {} and rates({"scored": 4}, 0.0) == {}


class _Model:
    """A model that records its loads, frees and pauses in ``events``."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events
        events.append(f"load {name}")

    def close(self) -> None:
        self.events.append(f"free {self.name}")

    def pause(self) -> None:
        self.events.append(f"pause {self.name}")


def test_a_backend_that_reserves_the_gpu_never_shares_it(write_recipe):
    """vLLM reserves most of the GPU: the reward model loads only after the engine paused (it sleeps,
    keeping what it can for the same weights), and the engine wakes only after the reward model is
    gone; before training everything is closed. Other backends keep every model loaded."""
    from eva_plugin.context import Iteration, exclusive
    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe
    from eva_plugin.runtime import OnDemand

    assert exclusive("vllm") and not exclusive("transformers")
    loop = EvaLoop(load_recipe(["--config", str(write_recipe())]))
    events: list[str] = []
    for reserves in (True, False):
        events.clear()
        it = Iteration(loop.run_facts, 1)
        it.policy = OnDemand(lambda: _Model("policy", events))
        reward = OnDemand(lambda: _Model("reward", events))
        it.rewarders = {"solver": reward, "creator": reward}
        it.evolver_llm = it.policy
        it._exclusive = {id(it.policy): reserves}
        for needed in (it.policy, reward, it.policy):
            it.make_room(needed)
            needed.get()
        it.close()
        if reserves:
            assert events == ["load policy", "pause policy", "load reward", "free reward", "load policy",
                              "free policy"]
        else:
            assert events == ["load policy", "load reward", "free policy", "free reward"]


def test_two_reward_models_are_never_held_together(write_recipe, models):
    """A creator reward model and a solver one: the first is freed before the second loads, and the
    policy (a backend that shares the device) stays."""
    from eva_plugin.context import Iteration
    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe
    from eva_plugin.runtime import OnDemand

    recipe = write_recipe(eva={"creator_reward_model": str(models["encoder"]), "creator_reward_type": "embedding"})
    loop = EvaLoop(load_recipe(["--config", str(recipe)]))
    it = Iteration(loop.run_facts, 1)
    assert it.rewarders["creator"] is not it.rewarders["solver"]
    events: list[str] = []
    it.policy = it.evolver_llm = OnDemand(lambda: _Model("policy", events))
    it.rewarders = {role: OnDemand(lambda role=role: _Model(role, events)) for role in ("creator", "solver")}
    it._exclusive = {}
    for needed in (it.policy, it.rewarders["creator"], it.policy, it.rewarders["solver"]):
        it.make_room(needed)
        needed.get()
    assert events == ["load policy", "load creator", "free creator", "load solver"]
