"""Output-dir safety: one run per output dir (a lock), folders finished by content, no leftovers of
killed runs, strict JSON manifests, and a run killed before any stage publishes resumes to the same data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from eva_plugin.artifacts import StageResult, StageStore, fingerprint, publish_dir, write_json_atomic
from eva_plugin.errors import EvaError
from eva_plugin.locking import LOCK, run_lock
from eva_plugin.stage_list import round_stages

ROOT = Path(__file__).resolve().parents[1]
EVA = Path(sys.executable).parent / "eva"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
FLOAT_COLUMNS = {"rewards", "reused_rewards", "info", "weight", "chosen_reward", "rejected_reward",
                 "chosen_probability", "rejected_probability"}
SMALL = {"iterations": 1, "prompts_per_iteration": 6}


def test_a_second_run_is_refused_in_one_line_naming_the_first(tmp_path):
    with run_lock(tmp_path / "out"):
        with pytest.raises(EvaError) as err, run_lock(tmp_path / "out"):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"output_dir {tmp_path / 'out'} is in use by pid {os.getpid()} on host ")
        assert message.endswith("; wait for it or choose another output_dir")
        with run_lock(tmp_path / "out", is_main=False):  # the other processes of a launch take no lock
            pass
    with run_lock(tmp_path / "out"):  # released
        pass


def test_the_lock_of_a_dead_run_is_taken_over_and_its_leftovers_removed(tmp_path):
    out = tmp_path / "out"
    (out / "iter_1" / ".scores.tmp-dead").mkdir(parents=True)
    (out / "iter_1" / ".manifest.json.abc.tmp").write_text("{")
    (out / LOCK).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "2000-01-01T00:00:00"}))
    with run_lock(out):
        owner = json.loads((out / LOCK).read_text())
        assert owner["pid"] == os.getpid()
        assert not list(out.glob("iter_1/.*"))


def _rows(n: int):
    return lambda tmp: StageResult(Dataset.from_dict({"x": list(range(n))}), {"made": n})


def test_a_folder_with_a_manifest_but_no_content_is_rebuilt_and_kept_aside(tmp_path):
    store = StageStore(tmp_path / "out")
    store.make(1, "scores", {"a": 1}, _rows(3), log=lambda _: None)
    assert store.is_done(1, "scores", {"a": 1})
    final = store.path(1, "scores")
    for f in (final / "data").iterdir():
        if f.suffix == ".arrow":
            f.unlink()  # a half-copied folder: the manifest alone does not make it finished
    assert not store.is_done(1, "scores", {"a": 1})
    data, _ = store.make(1, "scores", {"a": 1}, _rows(4), log=lambda _: None)
    assert len(data) == 4
    assert len(list(final.parent.glob(".scores.stale-*"))) == 1

    policy = store.path(1, "policy")
    policy.mkdir()
    write_json_atomic(policy / "manifest.json", {"fingerprint": fingerprint({"lr": 1})})
    assert not store.is_done(1, "policy", {"lr": 1})  # a checkpoint stage needs its weights
    (policy / "model.safetensors").write_bytes(b"weights")
    assert store.is_done(1, "policy", {"lr": 1})


def test_stale_names_are_unique_within_one_second(tmp_path):
    final = tmp_path / "stage"
    for i in range(3):
        tmp = tmp_path / f".stage.tmp-{i}"
        tmp.mkdir()
        publish_dir(tmp, final)
    assert len(list(tmp_path.glob(".stage.stale-*"))) == 2


def test_write_json_atomic_leaves_no_temp_file_when_it_fails(tmp_path):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        write_json_atomic(tmp_path / "m.json", {"a": Unprintable()})
    assert list(tmp_path.iterdir()) == []


def test_non_finite_stats_are_written_as_null(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": math.nan, "b": [math.inf, 1.5, np.float32("nan")],
                                            "c": {"d": -math.inf, "e": np.float64(2.0), "n": 3}})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == {
        "a": None, "b": [None, 1.5, None], "c": {"d": None, "e": 2.0, "n": 3}}


HOLD_FIRST_STAGE = """
import sys, time
from pathlib import Path
from eva_plugin import artifacts
go, started = Path(sys.argv.pop(1)), Path(sys.argv.pop(1))
original = artifacts.StageStore.make
def make(self, *args, **kwargs):
    started.touch()
    while not go.exists():
        time.sleep(0.05)
    return original(self, *args, **kwargs)
artifacts.StageStore.make = make
from eva_plugin.cli import main
sys.exit(main())
"""


def test_two_runs_on_one_output_dir_the_second_is_refused(write_recipe, tmp_path):
    recipe = write_recipe(eva=SMALL)
    script = tmp_path / "hold.py"
    script.write_text(HOLD_FIRST_STAGE)
    go, started = tmp_path / "go", tmp_path / "started"
    stop = ["--stop_after", "iter_1/creator_rewards"]
    first = subprocess.Popen([sys.executable, str(script), str(go), str(started), "run", str(recipe), *stop],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not started.exists():  # the first run holds the lock and waits before its first stage
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        second = subprocess.run([str(EVA), "run", str(recipe), *stop], capture_output=True, text=True,
                                env=ENV, cwd=ROOT, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        lines = [line for line in second.stderr.splitlines() if line.startswith("eva: error:")]
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert lines[0].startswith("eva: error: output_dir ")
        assert f"is in use by pid {first.pid} on host " in lines[0]
    finally:
        go.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert "stopped after iter_1/creator_rewards as asked" in out
    assert load_from_disk(str(tmp_path / "out" / "iter_1" / "creator_rewards" / "data")).num_rows > 0


KILL_BEFORE_PUBLISH = """
import os, signal, sys
from eva_plugin import artifacts
target = sys.argv.pop(1)
original = artifacts.publish_dir
def publish_dir(tmp, final):
    if f"{final.parent.name}/{final.name}" == target:
        os.kill(os.getpid(), signal.SIGKILL)
    original(tmp, final)
artifacts.publish_dir = publish_dir
from eva_plugin.cli import main
sys.exit(main())
"""


def _same(name: str, a: list, b: list) -> bool:
    if name in FLOAT_COLUMNS:
        pairs = [(np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float)))
                 for x, y in zip(a, b)]
        return len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, atol=1e-6, equal_nan=True)
                                        for x, y in pairs)
    return a == b


@pytest.mark.slow
def test_a_run_killed_before_any_stage_publishes_resumes_to_the_same_artifacts(write_recipe, tmp_path):
    """One chain: each run is SIGKILLed right before publishing the next stage (iter_0/seed_pool, then
    every stage of iteration 1), the following run resumes it; the end equals an uninterrupted run."""
    stop = ["--stop_after", "iter_1/policy"]
    whole = write_recipe("whole.yaml", eva=SMALL, output_dir=str(tmp_path / "whole"))
    killed = write_recipe("killed.yaml", eva=SMALL, output_dir=str(tmp_path / "killed"))
    base = subprocess.run([str(EVA), "run", str(whole), *stop], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert base.returncode == 0, base.stderr[-3000:]

    script = tmp_path / "kill.py"
    script.write_text(KILL_BEFORE_PUBLISH)
    out = tmp_path / "killed"
    for target in ["iter_0/seed_pool", *(f"iter_1/{s}" for s in round_stages("eva"))]:
        proc = subprocess.run([sys.executable, str(script), target, "run", str(killed), *stop],
                              capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert proc.returncode == -9, f"{target}: {proc.stderr[-3000:]}"
        where, stage = target.split("/")
        assert not (out / where / stage).exists()
        assert list((out / where).glob(f".{stage}.tmp-*")), target  # killed mid-stage
    proc = subprocess.run([str(EVA), "run", str(killed), *stop], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert not list(out.rglob("*.tmp-*")) and not list(out.rglob("*.tmp"))
    assert (out / "iter_1" / "policy" / "config.json").exists()
    for stage in ["seed_pool", *round_stages("eva")[:-1]]:
        for t in (0,) if stage == "seed_pool" else (1,):
            a = load_from_disk(str(tmp_path / "whole" / f"iter_{t}" / stage / "data"))
            b = load_from_disk(str(out / f"iter_{t}" / stage / "data"))
            assert a.column_names == b.column_names, stage
            for col in a.column_names:
                assert _same(col, a[col], b[col]), f"iter_{t}/{stage}.{col} differs after kill and resume"
