"""The plugin system: built-ins from default_plugins/, pluggy's call loop, EVA_LOAD_PLUGINS,
broken plugins, lazy factories and option checks."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eva_plugin import hookimpl, plugins
from eva_plugin.creator.proxies import Proxy
from eva_plugin.default_plugins import Lazy
from eva_plugin.errors import RecipeError, UnknownPluginError
from eva_plugin.options import Options

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "datasets", "distilabel")


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts from and leaves behind the plugins of a clean environment."""
    monkeypatch.delenv(plugins.LOAD_ENV, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def add(plugin: object, name: str) -> None:
    plugins.plugin_manager().register(plugin, name=name)
    plugins.registry.cache_clear()


def flat(rewards: np.ndarray) -> float:
    return 0.0


# --- built-ins ---------------------------------------------------------------------------------

def test_builtins_come_from_default_plugins_and_implementation_modules_register_nothing():
    import eva_plugin.creator.evolvers
    import eva_plugin.creator.proxies
    import eva_plugin.creator.selection
    import eva_plugin.generation
    import eva_plugin.rewards

    pm = plugins.plugin_manager()
    for kind in plugins.KINDS:
        assert pm.get_plugin(f"eva_plugin.default_plugins.{kind}") is not None
        assert {e.source for e in plugins.registry(kind).values()} == {"built-in"}
    for module in (eva_plugin.creator.proxies, eva_plugin.creator.selection, eva_plugin.creator.evolvers,
                   eva_plugin.rewards, eva_plugin.generation):
        assert not [n for n in vars(module) if n.startswith("register_")], module.__name__


def test_evolvers_and_self_instruct_do_not_import_each_other():
    creator = ROOT / "eva_plugin" / "creator"
    for name, other in (("evolvers", "self_instruct"), ("self_instruct", "evolvers")):
        tree = ast.parse((creator / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert f"eva_plugin.creator.{other}" not in imported


def test_listing_plugins_imports_no_heavy_library():
    code = ("import sys\nfrom eva_plugin.cli import main\nmain(['plugins'])\n"
            f"print('heavy:', [m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", plugins.LOAD_ENV: ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout
    assert "transformers             built-in" in proc.stdout


def test_lazy_factories_name_the_options_their_targets_declare():
    """Every built-in lazy factory carries its options schema (so a recipe is checked without importing
    torch), and the class it imports declares the same schema and builds through ``from_options``."""
    for kind in ("backends", "reward_models"):
        for name, entry in plugins.registry(kind).items():
            assert isinstance(entry.obj, Lazy) and entry.obj.Options is not None, name
            target = plugins.get(kind, name)
            assert target.Options is entry.obj.Options is plugins.options_schema(kind, name), name
            assert callable(target.from_options), name


def test_lazy_factory_imports_its_target_on_first_call():
    from eva_plugin.creator.selection import greedy

    lazy = Lazy("eva_plugin.creator.selection:greedy")
    rng = np.random.default_rng(0)
    assert list(lazy(np.array([0.1, 0.9, 0.5]), 2, rng)) == [1, 2]
    assert lazy.resolve() is greedy
    with pytest.raises(ValueError, match="not 'package.module:attribute'"):
        Lazy("eva_plugin.creator.selection")


# --- pluggy's call loop --------------------------------------------------------------------------

def test_a_hookwrapper_sees_the_call_and_what_it_registers_is_attributed_to_it():
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_proxies(self, register):
            seen.append("before")
            register("wrapped", Proxy(flat))
            result = yield
            seen.append("after")
            return result

    add(Wrapper(), "wrapper-plugin")
    table = plugins.registry("proxies")
    assert seen == ["before", "after"]
    assert table["wrapped"].source == "wrapper-plugin"
    assert table["a_min"].source == "built-in"


def test_tryfirst_runs_before_later_registered_plugins_and_duplicates_name_both_sources():
    order = []

    class First:
        @hookimpl(tryfirst=True)
        def register_selectors(self, register):
            order.append("first")
            register("pick", lambda w, k, rng: np.arange(k))

    class Plain:
        @hookimpl
        def register_selectors(self, register):
            order.append("plain")
            register("pick", lambda w, k, rng: np.arange(k))

    add(First(), "first-plugin")
    add(Plain(), "plain-plugin")  # pluggy calls later registrations first, unless tryfirst
    with pytest.raises(ValueError, match=r"selector 'pick' is registered twice \(first-plugin and plain-plugin\)"):
        plugins.registry("selectors")
    assert order == ["first", "plain"]


def test_a_register_hook_that_raises_is_dropped_from_that_kind_only(caplog):
    class Broken:
        @hookimpl
        def register_proxies(self, register):
            register("half_done", Proxy(flat))
            raise RuntimeError("no proxies today")

        @hookimpl
        def register_selectors(self, register):
            register("fine", lambda w, k, rng: np.arange(k))

    class Good:
        @hookimpl
        def register_proxies(self, register):
            register("good_proxy", Proxy(flat))

    add(Good(), "good-plugin")
    add(Broken(), "broken-plugin")
    with caplog.at_level(logging.WARNING, logger="eva_plugin.plugins"):
        proxies = plugins.registry("proxies")
        plugins.registry.cache_clear()
        plugins.registry("proxies")  # warned once, not on every rebuild
    assert "good_proxy" in proxies and "a_min" in proxies and "half_done" not in proxies
    assert "fine" in plugins.registry("selectors")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["eva: skipped plugin broken-plugin for proxies: RuntimeError: no proxies today"]
    assert [s.line() for s in plugins.skipped()] == [warnings[0].removeprefix("eva: ")]


def test_a_builtin_that_raises_is_not_swallowed(monkeypatch):
    def boom(register):
        raise RuntimeError("bug in a built-in")

    module = plugins.plugin_manager().get_plugin("eva_plugin.default_plugins.proxies")
    impl = next(i for i in plugins.plugin_manager().hook.register_proxies.get_hookimpls() if i.plugin is module)
    monkeypatch.setattr(impl, "function", boom)
    plugins.registry.cache_clear()
    with pytest.raises(RuntimeError, match="bug in a built-in"):
        plugins.registry("proxies")


# --- entry points and EVA_LOAD_PLUGINS ---------------------------------------------------------------

GOOD = """
import numpy as np
from eva_plugin import hookimpl
from eva_plugin.creator.proxies import Proxy

@hookimpl
def register_proxies(register):
    register("{proxy}", Proxy(lambda r: float(np.median(r))))
"""
BROKEN_REGISTER = """
from eva_plugin import hookimpl

@hookimpl
def register_proxies(register):
    raise KeyError("config")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path with three installed distributions, each with an ``eva_plugin`` entry point."""
    root = tmp_path / "site"
    tag = tmp_path.name.replace("-", "_")[-40:]  # module names unique to this test
    dists = {
        "good-plugin": ("1.2", f"good_{tag}", GOOD.format(proxy="median_reward")),
        "broken-import": ("0.1", f"broken_import_{tag}", "import not_an_installed_module_at_all\n"),
        "broken-register": ("0.3", f"broken_register_{tag}", BROKEN_REGISTER),
    }
    for dist, (version, module, code) in dists.items():
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[eva_plugin]\n{module.split('_' + tag)[0]} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for _, module, _ in dists.values():
        sys.modules.pop(module, None)


def test_every_installed_plugin_loads_and_broken_ones_are_skipped_with_one_warning(site, caplog):
    with caplog.at_level(logging.WARNING, logger="eva_plugin.plugins"):
        proxies = plugins.registry("proxies")
    assert proxies["median_reward"].source == "good-plugin 1.2"
    assert proxies["a_min"].source == "built-in"
    assert plugins.get("proxies", "median_reward").info([1.0, 2.0, 9.0]) == 2.0
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert len(warnings) == 2
    assert warnings[0].startswith("eva: skipped plugin broken-import 0.1: ModuleNotFoundError: ")
    assert "not_an_installed_module_at_all" in warnings[0]
    assert warnings[1] == "eva: skipped plugin broken-register 0.3 for proxies: KeyError: 'config'"


@pytest.mark.parametrize("value", ["good-plugin", "Good_Plugin", " good ,", "good-plugin,broken-register"])
def test_eva_load_plugins_loads_only_the_named_plugins(site, monkeypatch, value, caplog):
    monkeypatch.setenv(plugins.LOAD_ENV, value)
    with caplog.at_level(logging.WARNING, logger="eva_plugin.plugins"):
        assert "median_reward" in plugins.names("proxies")
    assert "broken-import" not in caplog.text
    assert ("broken-register" in caplog.text) is ("broken-register" in value)


def test_empty_eva_load_plugins_loads_no_third_party_plugin(site, monkeypatch, caplog):
    monkeypatch.setenv(plugins.LOAD_ENV, "")
    with caplog.at_level(logging.WARNING, logger="eva_plugin.plugins"):
        table = plugins.registry("proxies")
    assert {e.source for e in table.values()} == {"built-in"} and "a_min" in table
    assert not caplog.records and not plugins.skipped()


def test_eva_load_plugins_naming_nothing_installed_warns(site, monkeypatch, caplog):
    monkeypatch.setenv(plugins.LOAD_ENV, "good-plugin,no-such-plugin")
    with caplog.at_level(logging.WARNING, logger="eva_plugin.plugins"):
        assert "median_reward" in plugins.names("proxies")
    assert "skipped plugin no-such-plugin: EVA_LOAD_PLUGINS names it" in caplog.text


def test_eva_plugins_lists_sources_and_one_line_per_skipped_plugin(site):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop(plugins.LOAD_ENV, None)
    proc = subprocess.run([str(Path(sys.executable).parent / "eva"), "plugins"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "  median_reward            good-plugin 1.2" in lines
    assert [ln for ln in lines if ln.startswith("skipped plugin")] == [
        next(ln for ln in lines if ln.startswith("skipped plugin broken-import 0.1: ModuleNotFoundError")),
        "skipped plugin broken-register 0.3 for proxies: KeyError: 'config'",
    ]
    assert proc.stderr.count("skipped plugin") == 2  # the warnings, one line each


# --- options -------------------------------------------------------------------------------------

def test_parse_options_names_the_unknown_option_and_the_known_ones():
    parsed = plugins.parse_options("evolvers", "evol_instruct", {"mutations": ["CONSTRAINTS"]}, "eva.evolver_options")
    assert parsed.mutations == ["CONSTRAINTS"]
    assert plugins.parse_options("evolvers", "self_instruct", {"criteria": "Be brief."}, "w").criteria == "Be brief."
    with pytest.raises(RecipeError) as err:
        plugins.parse_options("evolvers", "evol_instruct", {"x": 1}, "eva.evolver_options")
    assert str(err.value) == "eva.evolver_options: evol_instruct takes no option 'x'; it takes: mutations"
    with pytest.raises(RecipeError, match="self_instruct takes no options 'x', 'mutations'; it takes: criteria"):
        plugins.parse_options("evolvers", "self_instruct", {"x": 1, "mutations": []}, "eva.evolver_options")
    with pytest.raises(RecipeError, match="evol_quality takes no option 'candidates'"):  # the run's, not an option
        plugins.parse_options("evolvers", "evol_quality", {"candidates": 2}, "eva.evolver_options")
    with pytest.raises(RecipeError, match="none takes no option 'mutations'; it takes: none"):
        plugins.parse_options("evolvers", "none", {"mutations": []}, "eva.evolver_options")
    with pytest.raises(UnknownPluginError, match="unknown evolver 'nope'"):
        plugins.parse_options("evolvers", "nope", {}, "eva.evolver_options")


def test_backend_options_refuse_what_the_run_owns_and_check_types_and_ranges():
    for key in ("sampling", "batch_tokens", "batch_size", "device", "model_kwargs"):
        with pytest.raises(RecipeError, match=f"vllm takes no option '{key}'"):
            plugins.parse_options("backends", "vllm", {key: 1}, "eva.generation.options")
    with pytest.raises(RecipeError, match="transformers takes no option 'anything'; it takes: none"):
        plugins.parse_options("backends", "transformers", {"anything": 1}, "eva.generation.options")
    with pytest.raises(RecipeError, match=r"`eva.generation.options.gpu_memory_utilization` must be <= 1, got 1.5"):
        plugins.parse_options("backends", "vllm", {"gpu_memory_utilization": 1.5}, "eva.generation.options")
    with pytest.raises(RecipeError, match=r"`eva.generation.options.timeout` must be a number, got 'slow'"):
        plugins.parse_options("backends", "openai", {"timeout": "slow"}, "eva.generation.options")
    parsed = plugins.parse_options("backends", "vllm", {"max_model_len": 512, "engine_args": {"swap_space": 1}}, "w")
    assert (parsed.max_model_len, parsed.engine_args, parsed.tensor_parallel_size) == (512, {"swap_space": 1}, 1)


def test_a_third_party_factory_gets_its_typed_options_and_the_runs_context():
    """A plugin declares ``Options``; the manager parses the recipe's mapping into it and calls
    ``from_options`` with it and the run's context. A factory without ``Options`` takes none."""
    from dataclasses import dataclass

    from eva_plugin.options import ModelContext, option

    @dataclass(frozen=True)
    class StrictOptions(Options):
        alpha: float = option(1.0, "How strict.", ge=0)

    built = []

    class Strict:
        Options = StrictOptions

        @classmethod
        def from_options(cls, path, options, context):
            built.append((path, options, context))
            return cls()

    class Plain:
        @classmethod
        def from_options(cls, path, options, context):
            return cls()

    class Rewards:
        @hookimpl
        def register_reward_models(self, register):
            register("strict", Strict)
            register("plain", Plain)

    add(Rewards(), "reward-plugin")
    options = plugins.parse_options("reward_models", "strict", {"alpha": 2}, "eva.reward_options")
    context = ModelContext(device="cpu", seed=7)
    assert isinstance(plugins.build("reward_models", "strict", "/m", options=options, context=context), Strict)
    assert built == [("/m", StrictOptions(alpha=2), context)]
    with pytest.raises(RecipeError, match="strict takes no option 'path'; it takes: alpha"):
        plugins.parse_options("reward_models", "strict", {"path": "x"}, "eva.reward_options")
    with pytest.raises(RecipeError, match=r"`eva.reward_options.alpha` must be >= 0, got -1"):
        plugins.parse_options("reward_models", "strict", {"alpha": -1}, "eva.reward_options")
    with pytest.raises(RecipeError, match="plain takes no option 'alpha'; it takes: none"):
        plugins.parse_options("reward_models", "plain", {"alpha": 1}, "eva.reward_options")
    assert isinstance(plugins.build("reward_models", "plain", "/m", options=plugins.parse_options(
        "reward_models", "plain", {}, "w"), context=context), Plain)


def test_the_plugins_page_example_declares_options_and_scores():
    """The reward-model example of docs/plugins.md, run as written: registered, its options checked
    from the recipe's mapping, built and used."""
    import re
    import types

    page = (ROOT / "docs" / "plugins.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "class LengthReward" in block)
    module = types.ModuleType("length_reward_example")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    try:
        exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    add(module, "length-reward-example")
    from eva_plugin.options import ModelContext

    options = plugins.parse_options("reward_models", "length", {"target": 4}, "eva.reward_options")
    model = plugins.build("reward_models", "length", "-", options=options, context=ModelContext())
    assert model.score([[{"role": "user", "content": "x"}]], [["abcd", "ab"]]) == [[0.0, -0.5]]
    with pytest.raises(RecipeError, match=r"`eva.reward_options.target` must be >= 1, got 0"):
        plugins.parse_options("reward_models", "length", {"target": 0}, "eva.reward_options")
    with pytest.raises(RecipeError, match="length takes no option 'targett'; it takes: target"):
        plugins.parse_options("reward_models", "length", {"targett": 4}, "eva.reward_options")
