"""Logging the Handbook way: one level per process, library deprecation warnings not silenced."""

from __future__ import annotations

import logging
import warnings

import pytest

from eva_plugin import dpo
from eva_plugin.recipe import load_recipe


@pytest.fixture
def restore_levels():
    import datasets
    import transformers

    eva = logging.getLogger("eva_plugin").level
    tf, ds = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    yield
    logging.getLogger("eva_plugin").setLevel(eva)
    transformers.utils.logging.set_verbosity(tf)
    datasets.utils.logging.set_verbosity(ds)


@pytest.mark.parametrize(("main", "log_level", "expected"), [
    (True, "passive", (logging.INFO, logging.WARNING)),
    (True, "debug", (logging.DEBUG, logging.DEBUG)),
    (False, "info", (logging.WARNING, logging.WARNING)),  # log_level_replica defaults to warning
])
def test_levels_per_process(write_recipe, monkeypatch, restore_levels, main, log_level, expected):
    import datasets
    import transformers

    recipe = load_recipe(["--config", str(write_recipe()), "--log_level", log_level])
    monkeypatch.setattr(type(recipe.training), "should_log", property(lambda self: main))
    transformers.utils.logging.set_verbosity(logging.WARNING)
    dpo.setup_logging(recipe)
    assert logging.getLogger("eva_plugin").level == expected[0]
    assert transformers.utils.logging.get_verbosity() == expected[1]
    assert datasets.utils.logging.get_verbosity() == expected[1]


def test_main_sets_the_recipes_level_and_does_not_silence_library_warnings(write_recipe, monkeypatch,
                                                                            restore_levels, caplog):
    """``main`` reads the recipe, sets its log level, then runs: the run logs at that level (debug
    here, below the INFO ``main`` starts with), and a library's deprecation warning raised during
    the run still reaches the user."""
    import transformers

    seen = {}

    def run(recipe, **kwargs):  # stands in for the loop, after main's logging setup
        seen["transformers"] = transformers.utils.logging.get_verbosity()
        logging.getLogger("eva_plugin.loop").info("iteration 1 started")
        logging.getLogger("eva_plugin.loop").debug("a debug detail")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("`old_arg` is deprecated", FutureWarning, stacklevel=1)  # as a library warns
        seen["warnings"] = [str(w.message) for w in caught]

    monkeypatch.setattr(dpo, "run_recipe", run)
    transformers.utils.logging.set_verbosity(logging.ERROR)
    with warnings.catch_warnings():
        before = list(warnings.filters)
        assert dpo.main(["--config", str(write_recipe()), "--log_level", "debug"]) == 0
        assert warnings.filters == before
    assert seen == {"transformers": logging.DEBUG, "warnings": ["`old_arg` is deprecated"]}
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "eva_plugin.loop"]
    assert logged == [(logging.INFO, "iteration 1 started"), (logging.DEBUG, "a debug detail")]
