"""The EVA loop in-process on tiny models: artifacts, reference choice, resume, stale configs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from eva_plugin.creator.evolvers import STATUSES
from eva_plugin.dpo import run_recipe as run
from eva_plugin.errors import StaleArtifactError
from eva_plugin.recipe import load_recipe
from eva_plugin.solver.training import parameter_checksum
from eva_plugin.stage_list import round_stages


def manifest(out: Path, t: int, stage: str) -> dict:
    return json.loads((out / f"iter_{t}" / stage / "manifest.json").read_text())


def data(out: Path, t: int, stage: str):
    return load_from_disk(str(out / f"iter_{t}" / stage / "data"))


def checksum(path) -> float:
    return parameter_checksum(AutoModelForCausalLM.from_pretrained(path))


def test_two_eva_iterations_write_every_artifact(write_recipe, tmp_path, prompts_file):
    recipe = load_recipe(["--config", str(write_recipe())])
    run(recipe)
    out = recipe.output_dir
    n_seed = len(prompts_file.read_text().splitlines())
    for t in (1, 2):
        for stage in round_stages("eva"):
            m = manifest(out, t, stage)
            assert m["stage"] == stage and m["iteration"] == t and len(m["fingerprint"]) == 16
            assert m["seconds"] >= 0
            if stage != "policy":
                assert len(data(out, t, stage)) == m["rows"]
        scored = data(out, t, "creator_rewards")
        assert len(scored) == n_seed and all(len(r) == 4 for r in scored["rewards"])
        # throughput: tokens/s of the sampling stages, responses/s of the scoring stages
        sampled = manifest(out, t, "creator_samples")
        assert sampled["tokens_per_second"] == pytest.approx(sampled["tokens_generated"] / sampled["seconds"],
                                                             rel=0.05, abs=0.2)
        assert manifest(out, t, "creator_rewards")["scored"] == n_seed * 4
        assert manifest(out, t, "creator_rewards")["responses_per_second"] > 0
        scores = data(out, t, "scores")
        assert sum(scores["weight"]) == pytest.approx(1.0)
        assert len(data(out, t, "selected")) == round(n_seed * 0.25)
        evolved = data(out, t, "evolved")
        assert len(evolved) == round(n_seed * 0.25) * 2  # every evolution is kept as a row
        assert set(evolved["step"]) == {1, 2}
        ev = manifest(out, t, "evolved")
        assert sum(ev[s] for s in STATUSES) == len(evolved) and ev["tokens_generated"] > 0
        assert ev["kept"] > 0
        prompts = data(out, t, "prompts")
        assert len(prompts) == n_seed
        origins = manifest(out, t, "prompts")["origins"]
        assert origins.get("evolved", 0) == min(ev["kept"], round(0.8 * n_seed))
        pairs = data(out, t, "pairs")
        assert all(c > r for c, r in zip(pairs["chosen_reward"], pairs["rejected_reward"]))
        assert pairs[0]["prompt"][0]["role"] == "user" and pairs[0]["chosen"][0]["role"] == "assistant"
        samples = manifest(out, t, "solver_samples")
        # the buffer is seed data (the paper's); creator samples stand in where the creator scored it
        seeds = set(data(out, 0, "seed_pool")["prompt_id"])
        buffer = [r for r in prompts if r["origin"] == "buffer"]
        assert buffer and {r["prompt_id"] for r in buffer} <= seeds
        scored_ids = set(data(out, t, "creator_rewards")["prompt_id"])
        assert samples["generations_saved"] == sum(r["prompt_id"] in scored_ids for r in buffer) * 4
        assert samples["generations"] + samples["generations_saved"] == len(prompts) * 4
        if t == 1:  # round 1 scores the seed split itself: every buffer prompt is reused
            assert samples["generations_saved"] == origins["buffer"] * 4
        policy = out / f"iter_{t}" / "policy"
        assert (policy / "config.json").exists() and (policy / "model.safetensors").exists()
        assert (policy / "tokenizer.json").exists()
        iteration = json.loads((out / f"iter_{t}" / "manifest.json").read_text())
        assert set(iteration["stages"]) == set(round_stages("eva"))
    # round 2 starts from round 1's policy and the weights moved
    assert manifest(out, 2, "policy")["policy_from"] == str(out / "iter_1" / "policy")
    assert checksum(out / "iter_1" / "policy") != checksum(out / "iter_2" / "policy")
    assert not list(out.glob("iter_*/.*tmp*")) and not list(out.glob("iter_*/.policy.partial"))
    assert not list(out.glob("iter_*/*/data/cache-*")), "published artifacts are never written into"


@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_round_two_reference_is_the_one_asked_for(write_recipe, models, reference):
    recipe = load_recipe(["--config", str(write_recipe(eva={"reference": reference}))])
    run(recipe)
    out = recipe.output_dir
    used = manifest(out, 2, "policy")["reference_checksum"]
    previous, initial = checksum(out / "iter_1" / "policy"), checksum(models["policy"])
    assert previous != pytest.approx(initial)
    expected = previous if reference == "previous" else initial
    assert used == pytest.approx(expected, rel=1e-9)
    assert manifest(out, 1, "policy")["reference_checksum"] == pytest.approx(initial, rel=1e-9)
    # and by log-probs: the reference's log p(y+ | x) of round 2's first pair
    from eva_plugin.modeling import load_tokenizer
    from eva_plugin.solver.training import sequence_logp

    pair = data(out, 2, "pairs")[0]
    tok = load_tokenizer(str(models["policy"]))
    logp = {name: sequence_logp(AutoModelForCausalLM.from_pretrained(path), tok, pair["prompt"], pair["chosen"])
            for name, path in (("previous", out / "iter_1" / "policy"), ("initial", models["policy"]))}
    assert abs(logp["previous"] - logp["initial"]) > 1e-4
    assert manifest(out, 2, "policy")["reference_logp_probe"] == pytest.approx(logp[reference], abs=1e-4)


def _final_state(out: Path):
    pairs = data(out, 2, "pairs")
    sd = AutoModelForCausalLM.from_pretrained(out / "iter_2" / "policy").state_dict()
    return pairs.to_list(), sd


def test_resume_after_a_stop_gives_the_same_final_artifacts(write_recipe, tmp_path):
    whole = load_recipe(["--config", str(write_recipe("a.yaml", output_dir=str(tmp_path / "whole")))])
    run(whole)
    path = write_recipe("b.yaml", output_dir=str(tmp_path / "resumed"))
    run(load_recipe(["--config", str(path)]), stop_after="evolved")
    assert (tmp_path / "resumed" / "iter_1" / "evolved" / "manifest.json").exists()
    assert not (tmp_path / "resumed" / "iter_1" / "prompts").exists()
    run(load_recipe(["--config", str(path)]), stop_after="policy")  # finishes iteration 1 only
    assert not (tmp_path / "resumed" / "iter_2").exists()
    run(load_recipe(["--config", str(path)]))
    pairs_a, sd_a = _final_state(tmp_path / "whole")
    pairs_b, sd_b = _final_state(tmp_path / "resumed")
    assert pairs_a == pairs_b
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_stop_after_moves_on_when_rerun(write_recipe):
    path = write_recipe(eva={"iterations": 2})
    out = load_recipe(["--config", str(path)]).output_dir
    run(load_recipe(["--config", str(path)]), stop_after="pairs")
    assert (out / "iter_1" / "pairs").exists() and not (out / "iter_1" / "policy").exists()
    run(load_recipe(["--config", str(path)]), stop_after="pairs")  # skipped pairs: runs on to iter_2/pairs
    assert (out / "iter_1" / "policy").exists() and (out / "iter_2" / "pairs").exists()
    assert not (out / "iter_2" / "policy").exists()
    run(load_recipe(["--config", str(path)]), stop_after="iter_2/policy")
    assert (out / "iter_2" / "policy" / "manifest.json").exists()


def test_rerun_skips_finished_stages(write_recipe, capsys):
    path = write_recipe(eva={"iterations": 1})
    run(load_recipe(["--config", str(path)]))
    capsys.readouterr()
    run(load_recipe(["--config", str(path)]))
    printed = capsys.readouterr().out
    for stage in round_stages("eva"):
        assert f"[iter 1] {stage}: done before, skipped" in printed


def test_changed_config_names_the_stale_stage_and_keeps_old_work(write_recipe):
    path = write_recipe(eva={"iterations": 1})
    recipe = load_recipe(["--config", str(path)])
    run(recipe)
    changed = write_recipe(eva={"iterations": 1, "proxy": "a_avg"})
    with pytest.raises(StaleArtifactError, match=r"iter_1/scores was made with a different config \(changed: proxy\)"):
        run(load_recipe(["--config", str(changed)]))
    run(load_recipe(["--config", str(changed)]), overwrite_stale=True)
    out = recipe.output_dir
    assert manifest(out, 1, "scores")["config"]["proxy"] == "a_avg"
    assert manifest(out, 1, "creator_samples")["config"]  # upstream stages were reused
    assert list((out / "iter_1").glob(".scores.stale-*")), "the stale artifact is kept aside"
    warm = write_recipe(eva={"iterations": 1, "proxy": "a_avg"}, warmup_ratio=0.5)
    with pytest.raises(StaleArtifactError, match=r"iter_1/policy .*changed: training.warmup_steps"):
        run(load_recipe(["--config", str(warm)]))


def test_truncated_evolutions_are_dropped_by_default(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "evolver_drop_truncated": True}))])
    run(recipe, stop_after="prompts")
    evolved = data(recipe.output_dir, 1, "evolved")
    cut = [r for r in evolved if r["status"] == "truncated"]
    assert cut, "a random tiny model runs into the 16-token limit"
    assert manifest(recipe.output_dir, 1, "evolved")["truncated"] == len(cut)
    assert not set(r["prompt"] for r in cut) & set(data(recipe.output_dir, 1, "prompts")["prompt"])


@pytest.mark.parametrize("evolver", ["evol_instruct", "evol_complexity", "evol_quality", "self_instruct"])
def test_every_evolver_runs_in_the_loop(write_recipe, evolver):
    eva = {"iterations": 1, "evolver": evolver, "evolver_feedback": evolver == "evol_quality",
           "evolved_min_words": 0, "near_duplicate_threshold": 1.0}
    recipe = load_recipe(["--config", str(write_recipe(eva=eva))])
    run(recipe)
    out = recipe.output_dir
    evolved = data(out, 1, "evolved")
    m = manifest(out, 1, "evolved")
    assert len(evolved) > 0 and sum(m[s] for s in STATUSES) == len(evolved)
    assert m["config"]["evolver"] == evolver
    assert set(evolved["parent_id"]) <= set(data(out, 1, "selected")["prompt_id"])
    assert (out / "iter_1" / "policy" / "model.safetensors").exists()


def test_rewriter_with_the_policy_on_the_tiny_model(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "rewriter": True}))])
    run(recipe)
    m = manifest(recipe.output_dir, 1, "rewritten")
    assert sum(m[s] for s in ("rewritten", "empty", "truncated", "length")) == m["rows"]
    assert m["rows"] == manifest(recipe.output_dir, 1, "pairs")["rows"]
    assert manifest(recipe.output_dir, 1, "policy")["config"]["rewritten"] == m["fingerprint"]


def test_length_penalty_is_applied_before_scores_and_pairs(write_recipe, models):
    from eva_plugin.rewards.sequence_classification import SequenceClassificationReward

    lam = 0.01
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "length_penalty": lam}))])
    run(recipe, stop_after="pairs")
    out = recipe.output_dir
    scored = data(out, 1, "creator_rewards")
    rm = SequenceClassificationReward(str(models["reward"]))
    raw = rm.score([[{"role": "user", "content": p}] for p in scored["prompt"]], list(scored["responses"]))
    for row, r in zip(scored, raw):
        expected = [x - lam * len(y) for x, y in zip(r, row["responses"])]
        assert row["rewards"] == pytest.approx(expected, abs=1e-5)
    info = data(out, 1, "scores")["info"]
    assert info == pytest.approx([max(r) - min(r) for r in scored["rewards"]])  # a_min on penalised rewards
    solver = data(out, 1, "solver_rewards")
    for pair in data(out, 1, "pairs"):
        row = next(r for r in solver if r["prompt_id"] == pair["prompt_id"])
        assert pair["chosen_reward"] == pytest.approx(max(row["rewards"]))


@pytest.mark.parametrize(
    ("loss", "knobs"),
    [("dpo", {"beta": 0.1, "label_smoothing": 0.0, "nll_alpha": 0.0}), ("ipo", {"beta": 0.1, "nll_alpha": 0.0}),
     ("sppo", {"beta": 0.1, "nll_alpha": 0.0}), ("simpo", {"beta": 10.0, "gamma": 5.0, "nll_alpha": 0.0}),
     ("orpo", {"lambda": 0.5})],
)
def test_every_loss_trains_on_the_tiny_model(write_recipe, models, loss, knobs):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "loss": loss}))])
    run(recipe)
    m = manifest(recipe.output_dir, 1, "policy")
    assert m["loss"] == loss and m["knobs"] == knobs  # the recipe's beta: 0.1 wins for the DPO family
    assert m["steps"] >= 1 and np.isfinite(m["train_loss"])
    assert (m["reference_checksum"] is None) == (loss in ("simpo", "orpo"))
    assert checksum(recipe.output_dir / "iter_1" / "policy") != pytest.approx(checksum(models["policy"]))


def test_lora_adapters_are_merged_into_each_rounds_policy(write_recipe, models):
    recipe = load_recipe(["--config", str(write_recipe(
        use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"]))])
    assert recipe.model.use_peft
    run(recipe)
    out = recipe.output_dir
    initial = AutoModelForCausalLM.from_pretrained(models["policy"]).state_dict()
    for t in (1, 2):
        policy = out / f"iter_{t}" / "policy"
        assert (policy / "model.safetensors").exists() and not (policy / "adapter_config.json").exists()
        sd = AutoModelForCausalLM.from_pretrained(policy).state_dict()
        assert sd.keys() == initial.keys()  # a plain checkpoint, no lora_ weights
        changed = {k for k in sd if not torch.equal(sd[k], initial[k])}
        assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only LoRA targets moved
    # round 2 samples from (and trains from) the merged round-1 weights
    assert manifest(out, 2, "policy")["policy_from"] == str(out / "iter_1" / "policy")
    assert manifest(out, 2, "creator_samples")["config"]["policy"] == manifest(out, 1, "policy")["fingerprint"]


def test_creator_none_is_plain_iterative_dpo(write_recipe, prompts_file):
    recipe = load_recipe(["--config", str(write_recipe(creator="none", eva={"prompts_per_iteration": 6}))])
    run(recipe)
    out = recipe.output_dir
    assert sorted(p.name for p in (out / "iter_1").iterdir() if not p.name.startswith(".")) == sorted(
        [*round_stages("none"), "manifest.json"])
    p1, p2 = set(data(out, 1, "prompts")["prompt"]), set(data(out, 2, "prompts")["prompt"])
    assert len(p1) == len(p2) == 6 and not p1 & p2  # consecutive slices of the seed pool
    assert manifest(out, 2, "solver_samples")["generations"] == 6 * 4
    assert manifest(out, 2, "policy")["policy_from"] == str(out / "iter_1" / "policy")


def test_greedy_selector_takes_the_most_informative(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe(eva={"iterations": 1, "selector": "greedy"}))])
    run(recipe, stop_after="selected")
    scores = data(recipe.output_dir, 1, "scores")
    selected = set(data(recipe.output_dir, 1, "selected")["prompt_id"])
    chosen = [w for w, p in zip(scores["weight"], scores["prompt_id"]) if p in selected]
    rest = [w for w, p in zip(scores["weight"], scores["prompt_id"]) if p not in selected]
    assert len(chosen) == 3 and min(chosen) >= max(rest)


def test_a_run_folder_from_before_the_renames_is_resumed_not_rebuilt(write_recipe, tmp_path, monkeypatch):
    """Runs made before the seed pool's folder became ``iter_0/seed_pool`` and before the ``fraction``
    fingerprint keys were named ``subset_fraction`` / ``evolved_fraction`` resume with every stage reused."""
    from eva_plugin.creator.stages import Selected
    from eva_plugin.loop import EvaLoop
    from eva_plugin.solver.stages import Prompts

    path = write_recipe(eva={"iterations": 1})
    with monkeypatch.context() as old_version:  # the configs as the older version fingerprinted them
        for cls, key in ((Selected, "subset_fraction"), (Prompts, "evolved_fraction")):
            def config(self, it, _new=cls.config, _key=key):
                return {("fraction" if k == _key else k): v for k, v in _new(self, it).items()}
            old_version.setattr(cls, "config", config)
        run(load_recipe(["--config", str(path)]))
    out = tmp_path / "out"
    (out / "iter_0" / "seed_pool").rename(out / "iter_0" / "prompts")  # the folder's name then
    assert "fraction" in json.loads((out / "iter_1" / "selected" / "manifest.json").read_text())["config"]
    stages = lambda: sorted(p.stat().st_mtime_ns for p in out.glob("iter_*/*/manifest.json"))  # noqa: E731
    before = stages()
    logged: list[str] = []
    EvaLoop(load_recipe(["--config", str(path)]), log=logged.append).run()
    assert (out / "iter_0" / "seed_pool").is_dir() and not (out / "iter_0" / "prompts").exists()
    assert len(logged) == len(before) and all(line.endswith("done before, skipped") for line in logged), logged
    assert stages() == before  # nothing rebuilt or rewritten
