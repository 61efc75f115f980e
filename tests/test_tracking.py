"""Trackers (``report_to``): one TensorBoard run per EVA run, one step axis across rounds, ``eva/*``
numbers from the manifests at the step that ended each round's training."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from eva_plugin.dpo import run_recipe as run
from eva_plugin.recipe import load_recipe

pytest.importorskip("tensorboard")


def manifest(out: Path, t: int, stage: str) -> dict:
    return json.loads((out / f"iter_{t}" / stage / "manifest.json").read_text())


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file in ``logdir``, in the order written: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    out[value.tag].append((event.step, float(make_ndarray(value.tensor))))
    return out


def test_two_rounds_log_to_one_tensorboard_run_on_one_step_axis(write_recipe, tmp_path):
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["name three rivers", "explain rain"]))
    path = write_recipe(report_to=["tensorboard"], logging_steps=1,
                        eva={"eval_prompts": str(evals), "eval_samples": 2, "num_evolutions": 1})
    recipe = load_recipe(["--config", str(path)])
    run(recipe)
    out = recipe.output_dir
    assert [p.name for p in (out / "runs").iterdir()] == ["out"]  # one folder: <output_dir>/runs/<run_name>
    logged = scalars(out / "runs" / "out")

    steps = [manifest(out, t, "policy")["steps"] for t in (1, 2)]
    assert all(s > 0 for s in steps)
    # (a) the trainer's loss: 1, 2, …, steps of round 1 + steps of round 2, no restart at 0
    assert [step for step, _ in logged["train/loss"]] == list(range(1, sum(steps) + 1))

    # (b) eva/* of every iteration at the step that ended its training, the manifests' numbers
    ends = {0: 0, 1: steps[0], 2: sum(steps)}
    assert logged["eva/iteration"] == [(ends[t], float(t)) for t in (0, 1, 2)]
    for t in (1, 2):
        at = {tag: dict(values)[ends[t]] for tag, values in logged.items()
              if tag.startswith("eva/") and ends[t] in dict(values)}
        assert at["eva/pairs"] == manifest(out, t, "pairs")["pairs"]
        assert at["eva/selected"] == manifest(out, t, "selected")["selected"]
        assert at["eva/evolved/kept"] == manifest(out, t, "evolved")["kept"]
        assert at["eva/mean_info"] == pytest.approx(manifest(out, t, "scores")["mean_info"], rel=1e-6)
        assert at["eva/chosen_r"] == pytest.approx(manifest(out, t, "pairs")["mean_chosen_reward"], rel=1e-6)
        assert at["eva/seconds/policy"] == pytest.approx(manifest(out, t, "policy")["seconds"], rel=1e-6)
        assert at["eva/tokens/solver_samples"] == manifest(out, t, "solver_samples")["tokens_generated"]
        for key in ("mean_reward", "win_rate"):
            assert at[f"eva/eval/{key}"] == pytest.approx(manifest(out, t, "eval")[key], rel=1e-6)
    assert dict(logged["eva/eval/mean_reward"])[0] == pytest.approx(manifest(out, 0, "eval")["mean_reward"],
                                                                    rel=1e-6)
    assert "train/eva/pairs" not in logged

    # a resumed run (every stage reused) logs every iteration's eva/* again, at the same steps
    shutil.rmtree(out / "runs")
    run(load_recipe(["--config", str(path)]))
    again = scalars(out / "runs" / "out")
    assert again["eva/iteration"] == logged["eva/iteration"] and again["eva/pairs"] == logged["eva/pairs"]


def test_report_to_none_creates_no_runs_folder(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(creator="none", eva={"iterations": 1}))])
    run(recipe)
    assert (recipe.output_dir / "iter_1" / "policy" / "manifest.json").exists()
    assert not (recipe.output_dir / "runs").exists()


def test_report_to_is_resolved_as_transformers_does():
    from transformers.integrations import get_available_reporting_integrations

    from eva_plugin.tracking import reporters

    assert reporters("none") == reporters(["none"]) == reporters(None) == reporters([]) == []
    assert reporters("tensorboard") == reporters(["tensorboard"]) == ["tensorboard"]
    assert reporters("all") == get_available_reporting_integrations()
