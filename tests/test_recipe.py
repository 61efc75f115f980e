from pathlib import Path

import pytest
import yaml

from eva_plugin.config import RecipeError
from eva_plugin.recipe import load_recipe

HANDBOOK = Path(__file__).parent / "data" / "handbook_zephyr-7b-beta_dpo_config_full.yaml"


def test_verbatim_handbook_dpo_recipe_parses(caplog):
    recipe = load_recipe(["--config", str(HANDBOOK)])
    assert recipe.creator is None
    assert recipe.model.model_name_or_path == "alignment-handbook/zephyr-7b-sft-full"
    assert recipe.training.beta == 0.01
    assert recipe.training.learning_rate == 5.0e-7
    assert recipe.training.lr_scheduler_type == "cosine"
    assert recipe.training.max_length == 1024
    assert recipe.training.dataset_num_proc == 12
    assert recipe.training.warmup_steps == 0.1  # warmup_ratio: a ratio in transformers 5's warmup_steps
    assert [(d.path, d.config, d.split, d.columns) for d in recipe.datasets] == [
        ("HuggingFaceH4/ultrafeedback_binarized", "default", "train_prefs", ["chosen", "rejected"]),
        ("HuggingFaceH4/ultrafeedback_binarized", "default", "test_prefs", ["chosen", "rejected"]),
    ]
    assert recipe.test_split_size == 2000 and recipe.mixture_seed == 0
    notes = "\n".join(recipe.notes)
    assert "`torch_dtype` is now `dtype`" in notes
    assert "`max_prompt_length` ignored" in notes
    # one warning line per mapped or dropped key
    assert sum("max_prompt_length" in r.message for r in caplog.records) == 1


def test_handbook_recipe_plus_creator_flag(tmp_path):
    cfg = yaml.safe_load(HANDBOOK.read_text())
    cfg.update(creator="eva", eva={"reward_model": "/models/armorm", "iterations": 2, "proxy": "a_avg"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    recipe = load_recipe(["--config", str(path)])
    assert recipe.creator == "eva"
    assert recipe.eva.iterations == 2 and recipe.eva.proxy == "a_avg"
    # untouched keys keep the paper's defaults (SPEC §2)
    e = recipe.eva
    assert (e.num_samples, e.solver_samples, e.subset_fraction, e.num_evolutions, e.evolved_fraction) == (
        6, 6, 0.25, 4, 0.8)
    assert (e.selector, e.weighting, e.evolver, e.reference) == ("sample", "minmax", "evol_instruct", "previous")
    assert (e.generation.temperature, e.generation.top_p, e.generation.max_new_tokens) == (0.7, 0.9, 2048)
    assert (e.evolver_generation.temperature, e.evolver_generation.max_new_tokens) == (0.88, 666)


def test_old_handbook_mixer_format_and_legacy_keys(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": "m",
        "torch_dtype": "bfloat16",
        "dataset_mixer": {"HuggingFaceH4/ultrafeedback_binarized": 0.5, "argilla/dpo-mix-7k": 1.0},
        "dataset_splits": ["train_prefs", "test_prefs"],
        "preprocessing_num_workers": 4,
        "evaluation_strategy": "no",
        "use_flash_attention_2": True,
        "chat_template": "{{ messages }}",
        "rpo_alpha": 1.0,
        "output_dir": str(tmp_path / "o"),
    }))
    recipe = load_recipe(["--config", str(path)])
    assert [(d.path, d.split, d.weight) for d in recipe.datasets] == [
        ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", 0.5), ("argilla/dpo-mix-7k", "train_prefs", 1.0)]
    assert recipe.model.dtype == "bfloat16"
    assert recipe.training.dataset_num_proc == 4
    assert recipe.training.eval_strategy == "no"
    notes = "\n".join(recipe.notes)
    for key in ("use_flash_attention_2", "chat_template", "rpo_alpha"):
        assert f"`{key}` ignored" in notes


def test_unknown_top_level_key_is_an_error_with_close_matches(write_recipe):
    with pytest.raises(RecipeError, match="unknown recipe key `learning_rte`.*`learning_rate`"):
        load_recipe(["--config", str(write_recipe(learning_rte=1e-3))])


def test_cli_overrides_trl_and_eva_keys(write_recipe):
    path = write_recipe()
    recipe = load_recipe(["--config", str(path), "--beta", "0.3", "--eva.iterations", "5",
                          "--eva.generation.temperature=1.0", "--creator", "none"])
    assert recipe.training.beta == 0.3
    assert recipe.eva.iterations == 5 and recipe.eva.generation.temperature == 1.0
    assert recipe.creator == "none"


def test_legacy_keys_on_the_command_line_are_mapped(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe()), "--torch_dtype", "bfloat16", "--max_prompt_length", "64",
                          "--warmup_ratio=0.2"])
    assert recipe.model.dtype == "bfloat16" and recipe.training.warmup_steps == 0.2
    assert any("`--max_prompt_length` ignored" in n for n in recipe.notes)


@pytest.mark.parametrize(
    ("eva", "message"),
    [
        ({"proxy": "nope"}, "unknown eva.proxy 'nope'; known: {proxies}"),  # {kind}: every registered name
        ({"selector": "top"}, "unknown eva.selector 'top'; known: {selectors}"),
        ({"evolver": "magic"}, "unknown eva.evolver 'magic'; known: {evolvers}"),
        ({"reward_type": "oracle"}, "unknown eva.reward_type 'oracle'; known: {reward_models}"),
        ({"generation": {"backend": "tgi"}}, "unknown eva.generation.backend 'tgi'; known: {backends}"),
        ({"proxie": "a_min"}, "unknown key(s) proxie in `eva`"),
        ({"generation": {"temp": 1}}, "unknown key(s) temp in `eva.generation`"),
        ({"reference": "sft"}, "previous, initial"),
        ({"subset_fraction": 0}, "subset_fraction"),
        ({"weighting": "softmax"}, "minmax, proportional"),
        ({"generation": {"temperature": 0}}, "eva.generation.temperature must be > 0"),
        ({"loss": "kto"}, "unknown eva.loss 'kto'; known: dpo, ipo, sppo, sppo_hard, simpo, orpo"),
        ({"loss": "dpo", "loss_args": {"gamma": 5}},
         "eva.loss_args gamma do not belong to loss 'dpo'; it takes: beta, label_smoothing, nll_alpha"),
        ({"loss": "orpo", "loss_args": {"beta": 1}}, "it takes: lambda"),
        ({"evolver_options": {"x": 1}}, "eva.evolver_options: evol_instruct takes no option 'x'"),
        ({"iterations": "three"}, "`eva.iterations` must be an int, got 'three'"),
        ({"generation": {"top_p": None}}, "`eva.generation.top_p` must not be null"),
    ],
)
def test_bad_eva_values_fail_at_parse_time_with_the_choices(write_recipe, eva, message):
    from eva_plugin import plugins

    message = message.format(**{kind: ", ".join(plugins.names(kind)) for kind in plugins.KINDS})
    with pytest.raises(RecipeError) as err:
        load_recipe(["--config", str(write_recipe(eva=eva))])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_creator_and_missing_reward_model(write_recipe, models):
    with pytest.raises(RecipeError, match="unknown creator 'evo'; known: eva, none"):
        load_recipe(["--config", str(write_recipe(creator="evo"))])
    with pytest.raises(RecipeError, match="needs `eva.reward_model`"):
        load_recipe(["--config", str(write_recipe(eva={"reward_model": None}))])


def test_missing_recipe_file_is_one_clear_line(tmp_path):
    with pytest.raises(RecipeError, match="not found; pass --config"):
        load_recipe(["--config", str(tmp_path / "nope.yaml")])


def test_loss_knobs_paper_defaults_recipe_beta_and_overrides(tmp_path, models, prompts_file):
    base = {"model_name_or_path": str(models["policy"]), "output_dir": str(tmp_path / "o"),
            "dataset_name": str(prompts_file), "creator": "eva"}

    def knobs(eva, **top):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**base, **top, "eva": {"reward_model": "rm", **eva}}))
        return load_recipe(["--config", str(path)]).loss_knobs()

    nll = {"nll_alpha": 0.0}
    assert knobs({}) == {"beta": 0.05, "label_smoothing": 0.0, **nll}  # EVA Table 6
    assert knobs({"loss": "sppo"}) == {"beta": 0.001, **nll}
    assert knobs({"loss": "simpo"}) == {"beta": 10.0, "gamma": 5.0, **nll}
    assert knobs({"loss": "orpo"}) == {"lambda": 0.5}
    assert knobs({}, beta=0.01) == {"beta": 0.01, "label_smoothing": 0.0, **nll}  # a Handbook recipe's beta
    assert knobs({"loss": "simpo"}, beta=0.01) == {"beta": 10.0, "gamma": 5.0, **nll}  # not SimPO's beta
    assert knobs({"loss": "simpo", "loss_args": {"gamma": 3, "nll_alpha": 0.2}}) == {
        "beta": 10.0, "gamma": 3.0, "nll_alpha": 0.2}


def test_trl_loss_type_conflicting_with_eva_loss_is_refused(write_recipe):
    with pytest.raises(RecipeError, match="eva.loss: sppo conflicts with the recipe's `loss_type: ipo`"):
        load_recipe(["--config", str(write_recipe(loss_type="ipo", eva={"loss": "sppo"}))])
    with pytest.raises(RecipeError, match="conflicts"):
        load_recipe(["--config", str(write_recipe(eva={"loss": "sppo"})), "--loss_type", "ipo"])


def _run(code: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


def test_layers_import_downward_only():
    out = _run("import sys, eva_plugin.config, eva_plugin.dataset_mixture, eva_plugin.data; "
               "print(sorted(m for m in ('eva_plugin.plugins', 'eva_plugin.solver.losses', "
               "'eva_plugin.creator.proxies', 'eva_plugin.recipe') if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("creator: eva\neva: {proxy: nope, reward_model: rm}\n", "unknown eva.proxy 'nope'"),
        ("creator: evo\n", "unknown creator 'evo'"),
        ("eva: [1,\n  - x: :\n", "is not valid YAML: "),
        ("creator: eva\neva: {iterations: three}\n", "`eva.iterations` must be an int, got 'three'"),
        ("creator: eva\neva: {reward_model: rm, loss: dpo}\nloss_type: ipo\n", "conflicts with the recipe's"),
        ("datasets: [{path: a, fraction: 1}, {path: b}]\n", "must be set for every dataset or for none"),
        ("dataset_mixture: {datasets: [{id: a}]}\ndatasets: [{path: b}]\n", "not several"),
        ("dataset_mixture: {datasets: [{id: a, weight: 2}]}\n", "must be <= 1"),
    ],
)
def test_eva_side_errors_come_before_trl_is_imported(tmp_path, recipe, message):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe)
    out = _run("import sys\nfrom eva_plugin.errors import RecipeError\nfrom eva_plugin.recipe import load_recipe\n"
               f"try:\n    load_recipe(['--config', {str(path)!r}])\nexcept RecipeError as err:\n    print(err)\n"
               "print(sorted(m for m in ('trl', 'transformers', 'torch', 'datasets') if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    error, imported = out.stdout.strip().splitlines()
    assert message in error
    assert imported == "[]"


def test_trl_datasets_list_keeps_data_dir_and_its_fraction_meaning(tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": "m", "output_dir": str(tmp_path / "o"), "seed": 7,
        "datasets": [{"path": "json", "data_dir": "part1", "split": "train", "columns": ["prompt"], "fraction": 3},
                     {"path": "org/b", "name": "cfg", "data_files": "x.jsonl", "fraction": 1}],
        "test_split_size": 0.1,
    }))
    recipe = load_recipe(["--config", str(path)])
    assert [(d.path, d.config, d.data_dir, d.data_files, d.columns, d.fraction, d.weight) for d in recipe.datasets] == [
        ("json", None, "part1", None, ["prompt"], 3.0, 1.0), ("org/b", "cfg", None, "x.jsonl", None, 1.0, 1.0)]
    assert recipe.mixture_dialect == "trl" and recipe.mixture_seed == 7 and recipe.test_split_size == 0.1


def test_handbook_mixture_keeps_its_weight_meaning(tmp_path):
    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": "m", "output_dir": str(tmp_path / "o"),
        "dataset_mixture": {"datasets": [{"id": "org/a", "config": "c", "split": "train_prefs", "weight": 0.25,
                                          "data_dir": "d"}], "seed": 3, "test_split_size": 10},
    }))
    recipe = load_recipe(["--config", str(path)])
    (spec,) = recipe.datasets
    assert (spec.path, spec.config, spec.split, spec.weight, spec.fraction, spec.data_dir) == (
        "org/a", "c", "train_prefs", 0.25, None, "d")
    assert recipe.mixture_dialect == "handbook" and recipe.mixture_seed == 3 and recipe.test_split_size == 10
