"""Progress bars: tqdm on the main process only, off when configured so, never changing results."""

from __future__ import annotations

import sys

import pytest

from eva_plugin import progress


@pytest.fixture(autouse=True)
def main_process(monkeypatch):
    """Each test starts as the main process of a single-process run, bars configured on."""
    for name in ("RANK", "LOCAL_RANK", "EVA_DISABLE_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    state = sys.modules.get("accelerate.state")
    if state is not None:  # no accelerate state left over from other tests decides the rank
        monkeypatch.setattr(state.PartialState, "_shared_state", {})
    progress.configure(False)
    yield
    progress.configure(False)


def _run_bar(n: int = 3) -> None:
    with progress.bar(n, "sampling", "prompt") as b:
        for _ in range(n):
            b.update(1)


def test_enabled_on_the_main_process_writes_to_stderr(capsys):
    assert progress.enabled()
    assert not isinstance(progress.bar(1, "x"), progress._NoBar)
    _run_bar()
    err = capsys.readouterr().err
    assert "sampling" in err and "prompt" in err


def test_configured_disabled_is_silent(capsys):
    progress.configure(True)
    assert not progress.enabled()
    assert isinstance(progress.bar(3, "sampling"), progress._NoBar)
    _run_bar()
    assert capsys.readouterr().err == ""
    progress.configure(None)  # an unset disable_tqdm means on
    assert progress.enabled()


@pytest.mark.parametrize("name", ["RANK", "LOCAL_RANK"])
def test_other_ranks_are_silent(monkeypatch, capsys, name):
    monkeypatch.setenv(name, "1")
    assert not progress.enabled()
    _run_bar()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(name, "0")
    assert progress.enabled()


def test_env_switch_disables(monkeypatch, capsys):
    monkeypatch.setenv("EVA_DISABLE_PROGRESS", "1")
    assert not progress.enabled()
    _run_bar()
    assert capsys.readouterr().err == ""


def test_accelerate_state_decides_when_set_up(monkeypatch):
    state = pytest.importorskip("accelerate.state")

    class Fake:
        _shared_state = {"set": True}
        is_main_process = False

    monkeypatch.setattr(state, "PartialState", Fake)
    assert not progress.enabled()  # RANK unset, but the accelerate state says not main
    Fake.is_main_process = True
    monkeypatch.setenv("RANK", "1")
    assert progress.enabled()


def test_sampling_is_the_same_with_and_without_bars(models, capsys):
    from eva_plugin.generation import SamplingParams
    from eva_plugin.generation.transformers_backend import TransformersBackend

    convs = [[{"role": "user", "content": f"say something about {t}"}] for t in ("the sea", "a cat", "rain")]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, seed=3)
    backend = TransformersBackend(str(models["policy"]), batch_size=2, device="cpu")
    try:
        on = backend.generate(convs, 2, params)
        assert "sampling" in capsys.readouterr().err
        progress.configure(True)
        off = backend.generate(convs, 2, params)
        assert capsys.readouterr().err == ""
    finally:
        backend.close()
    assert on.texts == off.texts and on.finished == off.finished and on.num_tokens == off.num_tokens
