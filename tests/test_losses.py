"""`eva.loss: null` keeps an existing recipe's own TRL loss; eva.loss and loss_type must agree."""

from __future__ import annotations

import json

import pytest

from eva_plugin.errors import RecipeError
from eva_plugin.recipe import load_recipe


def test_null_loss_is_dpo_without_a_recipe_loss_type(write_recipe):
    recipe = load_recipe(["--config", str(write_recipe())])
    assert recipe.eva.loss == "dpo" and recipe.loss_knobs()["beta"] == 0.1


def test_conflicting_loss_choices_name_both(write_recipe):
    with pytest.raises(RecipeError, match="eva.loss: sppo conflicts with the recipe's `loss_type: apo_zero`"):
        load_recipe(["--config", str(write_recipe(loss_type="apo_zero", eva={"loss": "sppo"}))])
    with pytest.raises(RecipeError, match="conflicts"):
        load_recipe(["--config", str(write_recipe(eva={"loss": "dpo"})), "--loss_type", "ipo"])
    agree = load_recipe(["--config", str(write_recipe(loss_type="ipo", eva={"loss": "ipo"}))])
    assert agree.eva.loss == "ipo"
    with pytest.raises(RecipeError, match="it takes: nll_alpha"):
        load_recipe(["--config", str(write_recipe(loss_type="apo_zero", eva={"loss_args": {"beta": 0.2}}))])


def test_a_recipe_with_its_own_apo_zero_loss_trains_with_it(write_recipe):
    """The Handbook's smollm3 APO recipe style (`loss_type: apo_zero`) with `creator: eva`."""
    from eva_plugin.dpo import run_recipe as run

    path = write_recipe(loss_type="apo_zero", beta=0.05, eva={"iterations": 1, "loss_args": {"nll_alpha": 0.1}})
    recipe = load_recipe(["--config", str(path)])
    assert recipe.eva.loss is None and recipe.loss_knobs() == {"nll_alpha": 0.1}
    run(recipe)
    m = json.loads((recipe.output_dir / "iter_1" / "policy" / "manifest.json").read_text())
    assert m["loss_type"] == ["apo_zero"] and m["loss_weights"] is None and m["steps"] >= 1
    assert m["loss"] is None and m["reference"] is not None
