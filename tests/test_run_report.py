"""`eva report RUN_DIR` / `eva compare RUN_A RUN_B`: the report read from a run's artifacts alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk

from eva_plugin import cli, dpo, recipe, report

PLOTS = ["informativeness.png", "rewards_by_origin.png", "evolved_outcomes.png", "prompt_length.png",
         "categories.png", "stage_costs.png"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, recipe_writer) -> dict[str, Path]:
    """A finished 2-iteration run and one stopped after iter_2/evolved, built once for the module."""
    root = tmp_path_factory.mktemp("report_runs")
    write_recipe = recipe_writer(root)
    full = write_recipe("full.yaml", output_dir=str(root / "full"))
    dpo.run_recipe(recipe.load_recipe(["--config", str(full)]))
    stopped = write_recipe("stopped.yaml", output_dir=str(root / "stopped"))
    dpo.run_recipe(recipe.load_recipe(["--config", str(stopped)]), stop_after="iter_2/evolved")
    return {"full": root / "full", "stopped": root / "stopped"}


def _manifest(run: Path, t: int, stage: str) -> dict:
    return json.loads((run / f"iter_{t}" / stage / "manifest.json").read_text())


def test_report_writes_every_file_with_the_manifests_numbers(runs, capsys):
    run = runs["full"]
    assert cli.main(["report", str(run)]) == 0
    assert "mean info" in capsys.readouterr().out
    folder = run / "report"
    for name in ["report.md", "report.html", "report.json", *PLOTS]:
        assert (folder / name).is_file(), name
    data = json.loads((folder / "report.json").read_text())
    assert data["status"] == "finished iteration 2" and data["creator"] == "eva"
    assert sorted(data["plots"]) == sorted(PLOTS)
    for t in (1, 2):
        info = data["informativeness"][str(t)]
        assert info["mean_info"] == _manifest(run, t, "scores")["mean_info"]
        assert sum(info["counts"]) == _manifest(run, t, "scores")["rows"]
        assert sum(info["selected_counts"]) == info["selected"] == _manifest(run, t, "selected")["selected"]
        pairs = _manifest(run, t, "pairs")
        everything = data["rewards_by_origin"][str(t)]
        assert everything["all"] == {"pairs": pairs["pairs"], "chosen_mean": pairs["mean_chosen_reward"],
                                     "rejected_mean": pairs["mean_rejected_reward"]}
        by_origin = {o: r for o, r in everything.items() if o != "all"}
        assert sum(r["pairs"] for r in by_origin.values()) == pairs["pairs"]
        rows = load_from_disk(str(run / f"iter_{t}" / "pairs" / "data"))
        for origin, r in by_origin.items():
            chosen = [c for c, o in zip(rows["chosen_reward"], rows["origin"]) if o == origin]
            assert r["chosen_mean"] == pytest.approx(sum(chosen) / len(chosen))
        evolved = _manifest(run, t, "evolved")
        assert data["evolved_outcomes"][str(t)]["kept"] == evolved["kept"]
        assert sum(data["evolved_outcomes"][str(t)].values()) == evolved["rows"]
        summary = next(r for r in data["summary"] if r["iter"] == t)
        assert summary["pairs"] == pairs["pairs"] and summary["chosen r"] == pairs["mean_chosen_reward"]
        assert data["stage_costs"][str(t)]["policy"]["seconds"] == _manifest(run, t, "policy")["seconds"]
        assert sum(data["categories"][str(t)].values()) == _manifest(run, t, "prompts")["rows"]
    # the seed pool's prompts are all "writing": the evolved ones inherit it through their parents
    assert data["categories"]["1"] == {"writing": 12}
    assert data["eval"] == {}
    page = (folder / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in page.replace("data:image", "")
    md = (folder / "report.md").read_text()
    assert all(f"({name})" in md for name in PLOTS) and "mean info" in md


def test_stopped_run_reports_what_exists(runs, tmp_path, capsys):
    run = tmp_path / "stopped"
    shutil.copytree(runs["stopped"], run)
    shutil.rmtree(run / "iter_2" / "evolved" / "data")  # as a crash could leave it
    (run / "iter_2" / "scores" / "manifest.json").write_text("{torn")
    assert cli.main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["status"] == "stopped or crashed: the last published stage is iter_2/evolved"
    assert sorted(data["manifests"]["2"]) == ["creator_rewards", "creator_samples", "evolved", "selected"]
    assert "2" in data["evolved_outcomes"] and "2" not in data["rewards_by_origin"]
    assert [r["iter"] for r in data["summary"]] == [1, 2]
    assert (tmp_path / "rep" / "report.html").is_file()


def test_a_seed_pool_under_its_old_name_gives_the_same_report(runs, tmp_path):
    """Run folders written before the rename hold the seed pool in ``iter_0/prompts``; later
    iterations' ``prompts`` (X_t) keep that name."""
    found = next(n for n in ("seed_pool", "prompts") if (runs["full"] / "iter_0" / n).is_dir())
    folders = {}
    for name in ("seed_pool", "prompts"):
        folders[name] = tmp_path / name / "run"
        shutil.copytree(runs["full"], folders[name], ignore=shutil.ignore_patterns("report"))
        (folders[name] / "iter_0" / found).rename(folders[name] / "iter_0" / name)
    new, old = (report.collect(folders[name]) for name in ("seed_pool", "prompts"))
    assert {**old, "run_dir": None} == {**new, "run_dir": None}
    assert "seed_pool" in new["manifests"][0] and "prompts" not in new["manifests"][0]
    assert "prompts" in new["manifests"][1]
    assert new["prompt_length"][0]["prompts"] == new["manifests"][0]["seed_pool"]["rows"]  # the pool was read
    assert new["categories"][0] == {"writing": new["manifests"][0]["seed_pool"]["rows"]}
    assert report.text_report(old, folders["prompts"]).replace(str(folders["prompts"]), "RUN") == \
        report.text_report(new, folders["seed_pool"]).replace(str(folders["seed_pool"]), "RUN")
    assert report.iteration_metrics(old["manifests"], 0) == report.iteration_metrics(new["manifests"], 0)


def test_held_out_eval_is_plotted_when_present(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run, ignore=shutil.ignore_patterns("report", "policy"))
    for t, (reward, win) in enumerate([(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)]):
        (run / f"iter_{t}" / "eval").mkdir()
        (run / f"iter_{t}" / "eval" / "manifest.json").write_text(json.dumps(
            {"mean_reward": reward, "stderr": 0.01, "win_rate": win, "prompts": 8, "seconds": 1.0}))
    assert cli.main(["report", str(run)]) == 0
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["eval"]["2"] == {"mean_reward": 0.3, "stderr": 0.01, "win_rate": 0.7, "prompts": 8}
    assert "eval.png" in data["plots"] and (run / "report" / "eval.png").is_file()
    assert "win rate" in (run / "report" / "report.md").read_text()


def test_compare_puts_two_runs_side_by_side(runs, capsys):
    assert cli.main(["compare", str(runs["full"]), str(runs["stopped"])]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "metric" in line)
    assert "full [eva]" in header and "stopped" in header
    pairs = _manifest(runs["full"], 2, "pairs")["pairs"]
    line = next(line for line in out.splitlines() if line.split()[:2] == ["2", "pairs"])
    assert line.split()[2:] == [str(pairs), "-"]  # the stopped run has no pairs in iteration 2


def test_missing_run_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
