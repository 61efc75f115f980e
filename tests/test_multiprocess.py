"""Several processes under ``accelerate launch``: sampling and scoring are split across ranks.

The runs are real: ``accelerate launch --multi_gpu --num_processes 2`` on a machine without
a GPU starts two processes that form a gloo group (the recipe gets ``use_cpu`` because
there is no GPU). ``--cpu`` cannot be used for this: accelerate's ``--cpu`` launcher always
starts a single process, whatever ``--num_processes`` says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import load_from_disk

from eva_plugin.sharding import assignment
from eva_plugin.stage_list import round_stages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOAT_COLUMNS = {"rewards", "reused_rewards", "info", "weight", "chosen_reward", "rejected_reward",
                 "chosen_probability", "rejected_probability"}


def launch_two(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_assignment_gives_every_item_to_one_engine_and_a_group_the_same_share():
    for n in (0, 1, 7, 16):
        for world, group in ((1, 1), (2, 1), (3, 1), (4, 2), (8, 4)):
            shares = [assignment(n, rank, world, group) for rank in range(world)]
            firsts = [shares[r] for r in range(0, world, group)]
            assert sorted(i for share in firsts for i in share) == list(range(n))
            for r in range(world):
                assert shares[r] == shares[r - r % group]  # the ranks of one engine see the same items
    with pytest.raises(ValueError, match="cannot be split into groups of 3"):
        assignment(4, 0, 4, 3)


def _column_equal(name: str, a: list, b: list) -> bool:
    if name in FLOAT_COLUMNS:  # scalars or (ragged) lists per row
        rows = [(np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float)))
                for x, y in zip(a, b)]
        return len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, atol=1e-5) for x, y in rows)
    return a == b


def twin_recipes(write_recipe, tmp_path: Path) -> tuple[Path, Path]:
    """``one.yaml`` (2 EVA iterations on the tiny models, writing ``one/``) and ``two.yaml``, the same
    recipe writing ``two/``."""
    one = write_recipe("one.yaml", output_dir=str(tmp_path / "one"),
                       eva={"prompts_per_iteration": 8, "generation": {"max_new_tokens": 12, "batch_size": 3}})
    cfg = yaml.safe_load(one.read_text())
    cfg["output_dir"] = str(tmp_path / "two")
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(cfg))
    return one, two


def assert_same_stage(out_one: Path, out_two: Path, stage: str) -> dict:
    """The data of ``stage`` (``iter_T/NAME``) agree in both run folders (texts exactly, floats within 1e-5),
    and so do its fingerprint and tokens generated; the second run's manifest."""
    a, b = load_from_disk(str(out_one / stage / "data")), load_from_disk(str(out_two / stage / "data"))
    assert a.column_names == b.column_names and len(a) == len(b) > 0, stage
    for name in a.column_names:
        assert _column_equal(name, a[name], b[name]), f"{stage}: column {name} differs"
    m1, m2 = (json.loads((out / stage / "manifest.json").read_text()) for out in (out_one, out_two))
    assert m1["fingerprint"] == m2["fingerprint"], stage
    assert m1.get("tokens_generated") == m2.get("tokens_generated"), stage
    return m2


@pytest.mark.slow
def test_two_processes_write_the_artifacts_of_one(write_recipe, tmp_path):
    """Both runs: 2 EVA iterations on tiny models. Iteration 1's data artifacts must agree (texts
    exactly, rewards within 1e-5); the 2-process run must have split the work and trained on 2 ranks."""
    from eva_plugin.dpo import run_recipe as run
    from eva_plugin.recipe import load_recipe

    one, two = twin_recipes(write_recipe, tmp_path)
    run(load_recipe(["--config", str(one)]), stop_after="iter_1/pairs")
    first = launch_two("-m", "eva_plugin.dpo", "--config", str(two), "--stop_after", "iter_1/creator_rewards")
    assert "stopped after iter_1/creator_rewards as asked" in first.stdout
    # a changed config is refused on every rank in one line, without a traceback of ours (the
    # launcher still reports the exit code 2 in its own words)
    stale = launch_two("-m", "eva_plugin.dpo", "--config", str(two), "--eva.length_penalty", "0.001", check=False)
    assert stale.returncode != 0 and "eva_plugin/" not in stale.stderr, stale.stderr[-3000:]
    assert stale.stderr.count("eva: error: iter_1/creator_rewards was made with a different config "
                              "(changed: length_penalty)") == 1  # said once, by the main process
    proc = launch_two("-m", "eva_plugin.dpo", "--config", str(two))  # resumes on two processes
    assert "[iter 1] creator_rewards: done before, skipped" in proc.stdout
    assert "iter  scored" in proc.stdout  # the run finished and the main process printed the report

    out_one, out_two = tmp_path / "one", tmp_path / "two"
    for stage in round_stages("eva")[:-1]:
        m2 = assert_same_stage(out_one, out_two, f"iter_1/{stage}")
        if stage in ("creator_samples", "creator_rewards", "evolved", "solver_samples", "solver_rewards"):
            shares = m2["items_per_process"]
            assert len(shares) == 2 and min(shares) > 0, f"{stage}: both processes worked ({shares})"
            whole = {"creator_samples": m2["rows"], "creator_rewards": m2["rows"],
                     "solver_samples": m2.get("generations", 0) // 4, "solver_rewards": m2.get("scored", 0) // 4}
            if stage in whole:  # each prompt was worked on once, not once per process
                assert sum(shares) == whole[stage], (stage, shares)
    for t in (1, 2):
        policy = json.loads((out_two / f"iter_{t}" / "policy" / "manifest.json").read_text())
        assert policy["processes"] == 2 and policy["steps"] > 0
        assert (out_two / f"iter_{t}" / "policy" / "model.safetensors").exists()
    leftovers = [p.name for p in (out_two / "iter_1").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-written stage folders


FAILING = """
import sys
from accelerate import PartialState
from eva_plugin.sharding import ProcessFailed, Shards

state = PartialState(cpu=True)
shards = Shards(state)
assert state.num_processes == 2, state.num_processes

def work(idx):
    if state.process_index == 1 and sys.argv[1] == "run":
        raise ValueError("boom on rank one")
    return [i * 10 for i in idx], {"n": len(idx)}

def load():
    if state.process_index == 1:
        raise MemoryError("no room for the model")
    return "model"

def per_rank(idx):
    return [i * 10 + state.process_index for i in idx], {"n": len(idx)}

try:
    if sys.argv[1] == "run":
        shards.share(5, work)
    elif sys.argv[1] == "ok":
        results, counts = shards.share(5, work)
        print(f"rank {state.process_index}: {results} {counts}", flush=True)
    elif sys.argv[1] == "group":  # both ranks are one engine: the same share, rank 0's results count once
        results, counts = shards.share(5, per_rank, group_size=2)
        print(f"rank {state.process_index}: {results} {counts} {shards.items}", flush=True)
    elif sys.argv[1] == "disagree":
        shards.share(5, work, key=f"list-of-rank-{state.process_index}")
    elif sys.argv[1] == "main_only":  # the main process works alone for 5 heartbeats
        import time
        calls = []

        def slow():
            calls.append(state.process_index)
            time.sleep(0.5)
            return {"from": state.process_index}

        value = shards.from_main(slow, heartbeat=0.1)
        print(f"rank {state.process_index}: {value} calls={calls}", flush=True)
    elif sys.argv[1] == "main_fails":
        def gone():
            raise ConnectionError("server gone")

        shards.from_main(gone, heartbeat=0.1)
    else:
        shards.together(load)
except Exception as err:  # both ranks get here; meet once more so neither is killed before it prints
    kind = "ProcessFailed" if isinstance(err, ProcessFailed) else "own"
    print(f"rank {state.process_index} stopped ({kind}): {err}", flush=True)
    state.wait_for_everyone()
    state.destroy_process_group()
    sys.exit(3)
state.destroy_process_group()  # as eva_plugin.dpo does: exiting with a live gloo group can abort
"""


def test_a_failing_process_stops_the_others_instead_of_hanging(tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(FAILING)
    ok = launch_two(str(script), "ok")
    assert "rank 0: [0, 10, 20, 30, 40] {'n': 5}" in ok.stdout
    assert "rank 1: [0, 10, 20, 30, 40] {'n': 5}" in ok.stdout
    group = launch_two(str(script), "group")
    for rank in (0, 1):
        assert f"rank {rank}: [0, 10, 20, 30, 40] {{'n': 5}} [5, 5]" in group.stdout, group.stdout
    disagree = launch_two(str(script), "disagree", check=False)
    assert disagree.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank} stopped (ProcessFailed): the processes were asked to share different" in disagree.stdout
    for mode, message in (("run", "ValueError: boom on rank one"), ("together", "MemoryError: no room")):
        proc = launch_two(str(script), mode, check=False)
        assert proc.returncode != 0
        assert f"rank 0 stopped (ProcessFailed): process 1 failed: {message}" in proc.stdout, proc.stderr[-3000:]
        assert f"rank 1 stopped (own): {message.split(': ', 1)[1]}" in proc.stdout


def test_work_on_the_main_process_alone_reaches_every_process(tmp_path):
    """``Shards.from_main`` (a paid server's requests): only rank 0 runs the work, while it tells the
    other rank it still works; its value, or its failure, reaches both."""
    script = tmp_path / "shards.py"
    script.write_text(FAILING)
    ok = launch_two(str(script), "main_only")
    assert "rank 0: {'from': 0} calls=[0]" in ok.stdout and "rank 1: {'from': 0} calls=[]" in ok.stdout
    failed = launch_two(str(script), "main_fails", check=False)
    assert failed.returncode != 0
    assert "rank 0 stopped (own): server gone" in failed.stdout, failed.stderr[-3000:]
    assert "rank 1 stopped (ProcessFailed): process 0 failed: ConnectionError: server gone" in failed.stdout


@pytest.mark.slow
def test_two_processes_send_an_api_evolvers_requests_through_one_limit(write_recipe, tmp_path):
    """The evolver on a (loopback) server under two processes: the main process sends every request, so the
    server never sees more in flight than the one ``concurrency``, and each request once."""
    from test_openai_backend import Server

    server = Server()
    try:
        eva = {"iterations": 1, "subset_fraction": 1.0, "evolver_model": "gpt-4-0125-preview",
               "evolver_generation": {"backend": "openai", "max_new_tokens": 64,
                                      "options": {"base_url": server.base_url, "backoff": 0.01, "concurrency": 3}}}
        recipe = write_recipe("api.yaml", output_dir=str(tmp_path / "api"), eva=eva)
        launch_two("-m", "eva_plugin.dpo", "--config", str(recipe), "--stop_after", "iter_1/evolved")
    finally:
        server.close()
    manifest = json.loads((tmp_path / "api" / "iter_1" / "evolved" / "manifest.json").read_text())
    assert manifest["requests"] == len(server.requests) == 24  # 12 seeds × 2 chained evolutions, each once
    assert server.max_inflight == 3  # the run's limit, reached (one pool per rank would allow 6)
    assert manifest["items_per_process"] == [24, 0]  # the other process sent nothing


LOOP_FAILURES = """
import os
import sys
import tempfile

from eva_plugin import hookimpl, plugins
from eva_plugin.rewards.sequence_classification import SequenceClassificationReward

rank = int(os.environ["RANK"])


class FlakyReward:
    @hookimpl
    def register_reward_models(self, register):
        class Flaky:
            Options = SequenceClassificationReward.Options

            @staticmethod
            def from_options(path, options, context):
                if rank == 1:
                    raise MemoryError("no room for the reward model")
                return SequenceClassificationReward.from_options(path, options, context)

        register("flaky", Flaky)


if sys.argv[1] == "flaky_reward":
    plugins.plugin_manager().register(FlakyReward(), name="flaky-reward")
    plugins.registry.cache_clear()
else:  # the main process cannot create the stage's temporary folder
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if rank == 0 and kwargs.get("prefix", "").startswith(".creator_samples"):
            raise OSError("disk full")
        return real(*args, **kwargs)

    tempfile.mkdtemp = mkdtemp

from eva_plugin.dpo import main

sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_process_failing_inside_the_loop_stops_the_run_and_keeps_finished_stages(write_recipe, tmp_path):
    script = tmp_path / "loop_failures.py"
    script.write_text(LOOP_FAILURES)
    flaky = write_recipe("flaky.yaml", output_dir=str(tmp_path / "flaky"), eva={"reward_type": "flaky"})
    proc = launch_two(str(script), "flaky_reward", "--config", str(flaky), check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "process 1 failed: MemoryError: no room for the reward model" in out
    assert (tmp_path / "flaky" / "iter_1" / "creator_samples" / "manifest.json").exists()  # finished work kept
    assert not (tmp_path / "flaky" / "iter_1" / "creator_rewards").exists()

    # a failure only one process sees, before any shared step: it leaves at once and the launcher
    # stops the other process, which would otherwise wait in a gather for the collective timeout
    disk = write_recipe("disk.yaml", output_dir=str(tmp_path / "disk"))
    proc = launch_two(str(script), "disk_full", "--config", str(disk), check=False, timeout=300)
    assert proc.returncode != 0 and "disk full" in proc.stdout + proc.stderr
    assert (tmp_path / "disk" / "iter_0" / "seed_pool" / "manifest.json").exists()
    assert not (tmp_path / "disk" / "iter_1" / "creator_samples").exists()


def test_the_wait_at_a_shared_step_is_the_runs_own_timeout(write_recipe, tmp_path):
    """torch gives a new gloo group 30 minutes whatever the default group has; the run's group gets
    ``eva.collective_timeout``, by default the longer of ``ddp_timeout`` and 6 hours."""
    from datetime import timedelta

    from eva_plugin.loop import EvaLoop
    from eva_plugin.recipe import load_recipe
    from eva_plugin.sharding import LONG_WAIT, wait_timeout

    assert wait_timeout(None) == wait_timeout(None, 1800) == timedelta(seconds=LONG_WAIT) == timedelta(hours=6)
    assert wait_timeout(None, 30 * 3600) == timedelta(hours=30)  # a longer ddp_timeout wins
    assert wait_timeout(90, 30 * 3600) == timedelta(seconds=90)  # set: exactly that
    loop = EvaLoop(load_recipe(["--config", str(write_recipe(ddp_timeout=7200))]))
    assert loop.runtime.shards.timeout == timedelta(hours=6)
    loop = EvaLoop(load_recipe(["--config", str(write_recipe(eva={"collective_timeout": 600}))]))
    assert loop.runtime.shards.timeout == timedelta(minutes=10)
    with pytest.raises(Exception, match="eva.collective_timeout must be >= 1"):
        load_recipe(["--config", str(write_recipe(eva={"collective_timeout": 0}))])


WAITS = """
import os
import sys
import time

import torch
import torch.distributed as dist

from eva_plugin.dpo import report_error
from eva_plugin.errors import EvaError
from eva_plugin.loop import EvaLoop
from eva_plugin.recipe import load_recipe

loop = EvaLoop(load_recipe(["--config", sys.argv[1]]))
state, shards = loop.state, loop.runtime.shards
rank = state.process_index


def timeout(group):
    return group._get_backend(torch.device("cpu")).options._timeout


print(f"rank {rank}: ours {timeout(shards.group)}, default {timeout(dist.group.WORLD)}, "
      f"interface {os.environ['GLOO_SOCKET_IFNAME']}", flush=True)
if rank == 0:
    time.sleep(float(sys.argv[2]))  # the main process is busy; the other waits at the broadcast
try:
    print(f"rank {rank}: got {shards.broadcast('the outcome')}", flush=True)
except EvaError as err:
    print(f"rank {rank}: stopped waiting: {type(err).__name__}", flush=True)
    report_error(err)  # as eva_plugin.dpo.main does
except RuntimeError as err:  # the main process, late: its peer left
    print(f"rank {rank}: the other left: {type(err).__name__}", flush=True)
state.wait_for_everyone()
state.destroy_process_group()
"""


def test_a_process_waits_for_the_others_as_long_as_the_run_says(write_recipe, tmp_path):
    """Two real processes: the main one is 6 s late. With a 3 s timeout the other stops waiting and says
    which knob to raise; with the default it waits, on a group of 6 hours, on the interface the recipe's
    ``env:`` names."""
    script = tmp_path / "waits.py"
    script.write_text(WAITS)
    env = {"GLOO_SOCKET_IFNAME": "lo"}
    short = write_recipe("short.yaml", eva={"collective_timeout": 3}, env=env)
    proc = launch_two(str(script), str(short), "6", check=False, timeout=300)
    assert "rank 1: ours 0:00:03, default" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "rank 1: stopped waiting: WaitTimedOut" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    # one line from the process that waited, though it is not the main one, naming the knob
    assert "eva: error: process 1 waited 0:00:03 for the other processes at a shared step and gave up " \
           "(eva.collective_timeout: 3 s); if one process is that much slower, raise eva.collective_timeout" \
           in proc.stderr, proc.stderr[-3000:]
    long = write_recipe("long.yaml", env=env)
    proc = launch_two(str(script), str(long), "6", timeout=300)
    for rank in (0, 1):
        assert f"rank {rank}: ours 6:00:00, default " in proc.stdout, proc.stdout
        assert f"rank {rank}: got the outcome" in proc.stdout
    assert "interface lo" in proc.stdout
