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


def test_main_does_not_silence_library_warnings(tmp_path):
    with warnings.catch_warnings():
        before = list(warnings.filters)
        assert dpo.main(["--config", str(tmp_path / "missing.yaml")]) == 2
        assert warnings.filters == before
