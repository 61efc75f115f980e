"""Resuming inside a long stage: sampling and scoring write finished chunks, a rerun after SIGKILL reuses
them (whoever wrote them, on however many processes) and ends with the artifacts of an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import PartialState
from datasets import Dataset, load_from_disk

from eva_plugin import progress
from eva_plugin.artifacts import StageResult, StageStore, fingerprint, rates, remove_leftovers
from eva_plugin.chunks import StageChunks, folder_name
from eva_plugin.dpo import run_recipe
from eva_plugin.recipe import load_recipe
from eva_plugin.runtime import SHARED, StageRuntime
from eva_plugin.sharding import Shards

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
EVA = {"iterations": 1, "prompts_per_iteration": 10, "chunk_size": 2,
       "generation": {"max_new_tokens": 12, "batch_size": 3}}
STAGES = ("creator_samples", "creator_rewards")

#: ``python KILL …`` runs ``python -m eva_plugin.dpo …`` and SIGKILLs every process once each has written
#: EVA_KILL_AFTER chunks of stage EVA_KILL_STAGE (the processes meet in EVA_KILL_MEET first, so each did).
KILL = """
import os, signal, sys, time
from pathlib import Path
from eva_plugin import chunks

stage, after = os.environ["EVA_KILL_STAGE"], int(os.environ["EVA_KILL_AFTER"])
meet, world = Path(os.environ["EVA_KILL_MEET"]), int(os.environ.get("WORLD_SIZE", "1"))
rank, written, original = os.environ.get("RANK", "0"), [0], chunks.ChunkedCall.write

def write(self, *args, **kwargs):
    path = original(self, *args, **kwargs)
    if self.folder.name.startswith(f".{stage}.chunks-"):
        written[0] += 1
        if written[0] == after:
            meet.mkdir(exist_ok=True)
            (meet / rank).touch()
            while len(list(meet.iterdir())) < world:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    return path

chunks.ChunkedCall.write = write
from eva_plugin.dpo import main
sys.exit(main())
"""


def _run(*args: str, kill: tuple[str, int] | None = None, tmp: Path, launcher: list[str] | None = None,
         ) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if kill is not None:
        script = tmp / "kill.py"
        script.write_text(KILL)
        meet = tmp / f"meet-{kill[0]}-{len(list(tmp.glob('meet-*')))}"
        env.update(EVA_KILL_STAGE=kill[0], EVA_KILL_AFTER=str(kill[1]), EVA_KILL_MEET=str(meet))
        cmd = [*(launcher or [sys.executable]), str(script), *args]
    else:
        cmd = [*(launcher or [sys.executable]), "-m", "eva_plugin.dpo", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _manifest(out: Path, stage: str) -> dict:
    return json.loads((out / "iter_1" / stage / "manifest.json").read_text())


def _chunk_files(out: Path, stage: str) -> list[Path]:
    return sorted((out / "iter_1").glob(f".{stage}.chunks-*/*.json"))


def _same_data(a: Path, b: Path, stage: str) -> None:
    """The two runs' datasets of ``stage`` hold the same rows, bit for bit (rewards compared as floats)."""
    x = load_from_disk(str(a / "iter_1" / stage / "data")).to_list()
    y = load_from_disk(str(b / "iter_1" / stage / "data")).to_list()
    assert len(x) == len(y) > 0 and x == y, f"iter_1/{stage} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def whole(recipe_writer, tmp_path_factory) -> Path:
    """An uninterrupted run of iteration 1's creator sampling and scoring, chunks of 2 prompts."""
    folder = tmp_path_factory.mktemp("whole")
    recipe = recipe_writer(folder)("whole.yaml", eva=EVA, output_dir=str(folder / "out"))
    proc = _run("--config", str(recipe), "--stop_after", "iter_1/creator_rewards", tmp=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "out"


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_from_its_chunks_to_the_same_artifacts(whole, write_recipe, tmp_path):
    recipe = write_recipe("killed.yaml", eva=EVA, output_dir=str(tmp_path / "out"))
    out, stop = tmp_path / "out", ["--config", str(recipe), "--stop_after", "iter_1/creator_rewards"]

    proc = _run(*stop, kill=("creator_samples", 2), tmp=tmp_path)  # SIGKILL after 2 of the 5 sampling chunks
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (out / "iter_1" / "creator_samples").exists()
    assert len(_chunk_files(out, "creator_samples")) == 2

    # a changed fingerprint (another temperature) never reuses them and removes them; on a copy
    other = tmp_path / "other"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns(".eva.lock"))
    hotter = write_recipe("hotter.yaml", eva={**EVA, "generation": {**EVA["generation"], "temperature": 0.9}},
                          output_dir=str(other))
    run_recipe(load_recipe(["--config", str(hotter)]), stop_after="iter_1/creator_samples")
    assert _manifest(other, "creator_samples")["chunks_reused"] == 0
    assert not list((other / "iter_1").glob(".creator_samples.chunks-*"))

    proc = _run(*stop, kill=("creator_rewards", 1), tmp=tmp_path)  # resumes sampling, killed while scoring
    assert proc.returncode == -9, proc.stderr[-3000:]
    sampled = _manifest(out, "creator_samples")
    assert (sampled["chunks_reused"], sampled["prompts_reused"], sampled["chunks_written"]) == (2, 4, 3)
    assert sampled["tokens_generated"] == _manifest(whole, "creator_samples")["tokens_generated"]
    assert 0 < sampled["tokens_reused"] < sampled["tokens_generated"]
    assert sampled["items_per_process"] == [6]  # only the prompts left were sampled again
    assert not list((out / "iter_1").glob(".creator_samples.chunks-*"))  # gone once published
    assert len(_chunk_files(out, "creator_rewards")) == 1

    proc = _run(*stop, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = _manifest(out, "creator_rewards")
    assert (scored["chunks_reused"], scored["prompts_reused"], scored["chunks_written"]) == (1, 2, 4)
    assert scored["responses_reused"] == 2 * 4 and scored["scored"] == 10 * 4
    for stage in STAGES:
        _same_data(whole, out, stage)
    assert not [p.name for p in (out / "iter_1").iterdir() if p.name.startswith(".")]


def launch_two(*args: str, kill: tuple[str, int], tmp: Path) -> subprocess.CompletedProcess:
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--num_cpu_threads_per_process", "1"]
    return _run(*args, kill=kill, tmp=tmp, launcher=launcher)


@pytest.mark.slow
def test_chunks_two_processes_wrote_are_reused_by_one(whole, write_recipe, tmp_path):
    """Two processes each finish one sampling chunk and are killed; one process resumes with their chunks
    (other prompts than its own share would have been) and samples what the uninterrupted run sampled."""
    recipe = write_recipe("two.yaml", eva=EVA, output_dir=str(tmp_path / "out"))
    out, stop = tmp_path / "out", ["--config", str(recipe), "--stop_after", "iter_1/creator_samples"]
    proc = launch_two(*stop, kill=("creator_samples", 1), tmp=tmp_path)
    assert proc.returncode != 0 and not (out / "iter_1" / "creator_samples").exists(), proc.stderr[-3000:]
    written = [json.loads(p.read_text())["indices"] for p in _chunk_files(out, "creator_samples")]
    assert sorted(written) == [[0, 2], [1, 3]]  # rank 0's share is 0, 2, 4, …; rank 1's is 1, 3, 5, …

    proc = _run(*stop, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sampled = _manifest(out, "creator_samples")
    assert (sampled["chunks_reused"], sampled["prompts_reused"], sampled["items_per_process"]) == (2, 4, [6])
    assert sampled["tokens_generated"] == _manifest(whole, "creator_samples")["tokens_generated"]
    _same_data(whole, out, "creator_samples")


# --- the parts, in one process ---------------------------------------------------------------------------


def test_a_share_with_chunks_works_only_on_the_items_no_chunk_holds(tmp_path):
    shards, calls = Shards(PartialState(cpu=True)), []

    def work(idx: list[int]) -> tuple[list, dict[str, int]]:
        calls.append(list(idx))
        return [[float(i), math.nan if i == 4 else -float(i)] for i in idx], {"num_tokens": len(idx)}

    first = StageChunks(tmp_path / "chunks", 2)
    results, counts = shards.share(5, work, key="k", chunks=first.call("sample", "k"))
    assert calls == [[0, 1], [2, 3], [4]] and counts == {"num_tokens": 5}
    assert first.tally.stats() == {"chunk_size": 2, "chunks_written": 3, "chunks_reused": 0, "prompts_reused": 0,
                                   "tokens_reused": 0}
    (tmp_path / "chunks" / next(p.name for p in (tmp_path / "chunks").glob("sample-k-2-*"))).unlink()
    (tmp_path / "chunks" / "sample-k-9-broken.json").write_text('{"indices": [7], "results": [1], "counts": {}}')

    calls.clear()
    again = StageChunks(tmp_path / "chunks", 3)  # another chunk size: the chunks still fit
    resumed, counts = shards.share(5, work, key="k", chunks=again.call("sample", "k"))
    assert calls == [[2, 3]] and counts == {"num_tokens": 5}  # index 7 is no item of this list
    assert json.dumps(resumed) == json.dumps(results)  # NaN kept as NaN
    assert again.tally.stats()["chunks_reused"] == 2 and again.tally.stats()["prompts_reused"] == 3
    assert again.tally.stats()["tokens_reused"] == 3

    calls.clear()
    other = StageChunks(tmp_path / "chunks", 2)  # another call of the stage (another item list): nothing fits
    shards.share(5, work, key="other", chunks=other.call("sample", "other"))
    assert calls == [[0, 1], [2, 3], [4]] and other.tally.reused == 0


def test_the_runtime_keeps_chunks_of_an_unfinished_stage_and_drops_them_when_done_or_stale(tmp_path):
    store = StageStore(tmp_path / "out")
    rt = StageRuntime(store, PartialState(cpu=True), log=lambda line: None, chunk_size=2)
    rt.begin(1)
    config = {"a": 1}
    mine, stale = store.chunk_folder(1, "creator_samples", config), store.chunk_folder(1, "creator_samples", {"a": 0})
    assert mine.name == folder_name("creator_samples", fingerprint(config))
    for folder in (mine, stale):
        folder.mkdir(parents=True)
        (folder / "sample-k-0-x.json").write_text("{}")
    assert remove_leftovers(tmp_path / "out") == []  # the run lock keeps both: the stage is not finished

    seen = []

    def work(tmp: Path) -> StageResult:
        seen.append((rt.chunks.folder, stale.exists()))
        rt.shards.share(3, lambda idx: (list(idx), {}), chunks=rt.chunks.call("score", "k"))
        return StageResult(Dataset.from_dict({"x": [1]}))

    rt.run_stage(1, "creator_samples", config, work, SHARED)
    assert seen == [(mine, False)]  # another config's chunks go before the stage starts
    assert not mine.exists() and rt.chunks is None  # published: its chunks are gone
    manifest = json.loads((tmp_path / "out" / "iter_1" / "creator_samples" / "manifest.json").read_text())
    assert manifest["chunks_written"] == 2 and manifest["responses_reused"] == 0

    mine.mkdir()  # a run killed between publishing and removing: the next run lock removes it
    assert remove_leftovers(tmp_path / "out") == [mine]
    mine.mkdir()  # so does the next run of the stage, skipped as done
    rt.run_stage(1, "creator_samples", config, work, SHARED)
    assert not mine.exists() and len(seen) == 1


def test_rates_leave_out_what_reused_chunks_held():
    stats = {"tokens_generated": 500, "tokens_reused": 300, "scored": 40, "responses_reused": 40}
    assert rates(stats, 2.0) == {"tokens_per_second": 100.0}


def test_a_span_shows_its_parts_as_one_bar(monkeypatch):
    monkeypatch.delenv("EVA_DISABLE_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "enabled", lambda: True)
    with progress.span(5) as span:
        totals = []
        for size in (2, 2, 1):
            span.part(size)
            with progress.bar(size * 3, "scoring", "response") as bar:  # 3 responses per prompt
                bar.update(size * 3)
                totals.append(bar.tqdm.total)
        (held,) = span.bars.values()
        assert totals == [15, 15, 15] and held.tqdm.n == 15
