"""Several nodes: the shipped accelerate config and SLURM template, and real runs of two launchers.

A launch over two "machines" runs on this one: two ``accelerate launch --num_machines 2
--machine_rank {0,1}`` processes meet at 127.0.0.1 (static rendezvous, one CPU process each,
gloo), exactly as two nodes would, and run a small EVA run whose artifacts must equal a one-process
run's. A node that sees another folder at ``output_dir`` is played by a launcher started in
another working directory with a relative ``output_dir``: the same path names another folder.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_multiprocess import BIN, ROOT, assert_same_stage, twin_recipes

from eva_plugin.shared_folder import MISSING, TOKEN, not_shared, read_token, wait_seconds
from eva_plugin.stage_list import round_stages

CONFIGS = ROOT / "recipes" / "accelerate_configs"
TEMPLATE = ROOT / "recipes" / "slurm" / "eva_multinode.sbatch"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_machines(tmp_path: Path, *args: str, cwd: tuple[Path, Path] = (ROOT, ROOT), env: dict | None = None,
                    timeout: int = 600) -> list[tuple[int, str, str]]:
    """Two launchers, machine ranks 0 and 1, one process each; (exit code, stdout, stderr) of each."""
    port = str(free_port())
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(env or {})}
    procs, logs = [], []
    for rank in (0, 1):
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               "--same_network", "--rdzv_backend", "static", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", *args]
        out, err = tmp_path / f"machine{rank}.out", tmp_path / f"machine{rank}.err"
        logs.append((out, err))
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen(cmd, stdout=fo, stderr=fe, env=base, cwd=cwd[rank], start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:  # a launcher left hanging: stop it and the workers it started
                os.killpg(proc.pid, 9)
                proc.wait()
    return [(code, out.read_text(), err.read_text()) for code, (out, err) in zip(codes, logs)]


def _failed(results: list[tuple[int, str, str]]) -> str:
    return "\n".join(f"machine {r}: exit {c}\n{o[-2000:]}\n{e[-4000:]}" for r, (c, o, e) in enumerate(results))


def test_the_accelerate_configs_load_with_accelerates_own_reader():
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == ["ddp", "fsdp", "multinode_zero3", "zero3"]
    for name in names:  # an unknown or misspelt key is refused by this reader
        config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert config.num_processes % config.num_machines == 0, name
    multi = load_config_from_file(str(CONFIGS / "multinode_zero3.yaml"))
    single = load_config_from_file(str(CONFIGS / "zero3.yaml"))
    assert (multi.num_machines, multi.num_processes) == (2, 2 * single.num_processes)  # all GPUs of both nodes
    assert multi.deepspeed_config == single.deepspeed_config
    assert multi.deepspeed_config["deepspeed_multinode_launcher"] == "standard"  # torchrun per node, no ssh
    assert (multi.same_network, multi.rdzv_backend, multi.machine_rank) == (True, "static", 0)


SRUN = """#!/bin/bash
# SLURM's srun as the template uses it: one task per node, each with its own SLURM_NODEID.
set -euo pipefail
[[ "$1" == --ntasks-per-node=1 ]] || { echo "srun: expected --ntasks-per-node=1 first, got $1" >&2; exit 1; }
shift
while [[ "$1" == --* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURMD_NODENAME=node-$node "$@"
done
"""
SCONTROL = """#!/bin/bash
[[ "$*" == "show hostnames node-[0-1]" ]] || { echo "scontrol: unexpected $*" >&2; exit 1; }
printf 'node-0\\nnode-1\\n'
"""
ACCELERATE = """#!/bin/bash
{ printf '%q ' "$@"; echo; } >> "$LAUNCHES"
"""


def test_the_slurm_template_starts_one_launcher_per_node_with_its_own_rank(tmp_path):
    """SLURM cannot run here: ``srun`` and ``scontrol`` are stand-ins that do what the template asks
    of them, and ``accelerate`` records its arguments; those must parse with accelerate's own
    launch parser, each node with its machine rank (a ``$SLURM_NODEID`` expanded by the batch
    script's shell would give every node rank 0)."""
    from accelerate.commands.launch import launch_command_parser

    assert subprocess.run(["bash", "-n", str(TEMPLATE)]).returncode == 0
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("accelerate", ACCELERATE)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    launches = tmp_path / "launches.txt"
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "LAUNCHES": str(launches),
           "SLURM_JOB_NODELIST": "node-[0-1]", "SLURM_NNODES": "2", "EXTRA_ARGS": "--output_dir /shared/run"}
    proc = subprocess.run(["bash", str(TEMPLATE)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = launches.read_text().splitlines()
    assert len(lines) == 2
    for node, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[0] == "launch"
        args = launch_command_parser().parse_args(argv[1:])
        assert Path(args.config_file) == Path("recipes/accelerate_configs/multinode_zero3.yaml")
        assert (ROOT / args.config_file).exists()
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, node)
        assert (args.main_process_ip, args.main_process_port) == ("node-0", 29500)
        assert args.module and args.training_script == "eva_plugin.dpo"
        assert args.training_script_args[:2] == ["--config", "recipes/gemma-2-9b-it/dpo/config_eva.yaml"]
        assert args.training_script_args[2:] == ["--output_dir", "/shared/run"]
    outside = subprocess.run(["bash", str(TEMPLATE)], env={k: v for k, v in env.items() if k != "SLURM_JOB_NODELIST"},
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert outside.returncode != 0 and "submit this script with sbatch" in outside.stderr
    assert not launches.read_text().splitlines()[2:]  # nothing launched


def test_the_refusal_names_each_process_that_does_not_see_the_folder(tmp_path):
    token = "a" * 32
    ok = {"host": "n0", "path": "/shared/run", "seen": token}
    assert not_shared(Path("/shared/run"), token, [ok, dict(ok, host="n1")]) is None
    readings = [ok, dict(ok, host="n1")] + [{"host": "n2", "path": "/local/run", "seen": MISSING}] * 3 + [
        {"host": "n3", "path": "/shared/run", "seen": "b" * 32},
        {"host": "n2", "path": "/local/run", "seen": MISSING}]
    line = not_shared(Path("run"), token, readings)
    assert line == ("output_dir run is not one folder for every process: ranks 2-4, 6 on host n2 (/local/run: "
                    "missing); rank 5 on host n3 (/shared/run: another run's token) cannot read the file the main "
                    "process (host n0) wrote in /shared/run; put output_dir on a filesystem shared by all nodes "
                    "(NFS, Lustre, …) and give every node the same path, or run on one node")

    assert read_token(tmp_path) == MISSING
    assert read_token(tmp_path / "absent") == MISSING
    (tmp_path / TOKEN).write_text("{not json")
    assert read_token(tmp_path).startswith("unreadable (JSONDecodeError")
    (tmp_path / TOKEN).write_text(json.dumps({"token": token}))
    assert read_token(tmp_path) == token


def test_the_wait_for_a_slow_filesystem_is_read_from_the_environment(monkeypatch):
    from eva_plugin.errors import EvaError

    monkeypatch.delenv("EVA_SHARED_FOLDER_WAIT", raising=False)
    assert wait_seconds() == 30
    monkeypatch.setenv("EVA_SHARED_FOLDER_WAIT", " 2.5 ")
    assert wait_seconds() == 2.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("EVA_SHARED_FOLDER_WAIT", bad)
        with pytest.raises(EvaError, match=f"EVA_SHARED_FOLDER_WAIT='{bad}' is not a number of seconds >= 0"):
            wait_seconds()


@pytest.mark.slow
def test_two_machines_write_the_artifacts_of_one_process(write_recipe, tmp_path):
    """The same recipe on one process (up to iteration 1's pairs) and on two launchers (2 iterations):
    iteration 1's data artifacts agree (texts exactly, rewards within 1e-5), both machines worked,
    both trained, and the check's token is gone."""
    from eva_plugin.dpo import run_recipe
    from eva_plugin.recipe import load_recipe

    one, two = twin_recipes(write_recipe, tmp_path)
    run_recipe(load_recipe(["--config", str(one)]), stop_after="iter_1/pairs")
    results = launch_machines(tmp_path, "-m", "eva_plugin.dpo", "--config", str(two))
    assert [code for code, _, _ in results] == [0, 0], _failed(results)
    assert "iter  scored" in results[0][1] and "iter  scored" not in results[1][1]  # the main process's summary

    out_one, out_two = tmp_path / "one", tmp_path / "two"
    for stage in ("iter_0/seed_pool", *(f"iter_1/{s}" for s in round_stages("eva")[:-1])):
        m2 = assert_same_stage(out_one, out_two, stage)
        if "items_per_process" in m2:
            assert len(m2["items_per_process"]) == 2 and min(m2["items_per_process"]) > 0, stage
    for t in (1, 2):
        policy = json.loads((out_two / f"iter_{t}" / "policy" / "manifest.json").read_text())
        assert policy["processes"] == 2 and policy["steps"] > 0
    assert not (out_two / TOKEN).exists()


@pytest.mark.slow
def test_a_machine_that_sees_another_folder_stops_the_run_in_one_line(write_recipe, tmp_path):
    """Machine 1 starts in another working directory, so the recipe's relative ``output_dir`` is
    another folder there: both machines stop before any stage, each saying so once, and the main
    process's folder keeps no token."""
    recipe = write_recipe("rel.yaml", output_dir="run")
    nodes = (tmp_path / "node0", tmp_path / "node1")
    for node in nodes:
        node.mkdir()
    results = launch_machines(tmp_path, "-m", "eva_plugin.dpo", "--config", str(recipe), cwd=nodes,
                              env={"EVA_SHARED_FOLDER_WAIT": "1"}, timeout=300)
    host = socket.gethostname()
    for code, out, err in results:
        assert code != 0, _failed(results)
        lines = [line for line in (out + err).splitlines() if "eva: error:" in line]
        assert len(lines) == 1, _failed(results)
        assert lines[0] == (
            f"eva: error: on host {host}: output_dir run is not one folder for every process: rank 1 on host {host} "
            f"({nodes[1].resolve() / 'run'}: missing) cannot read the file the main process (host {host}) wrote in "
            f"{nodes[0].resolve() / 'run'}; put output_dir on a filesystem shared by all nodes (NFS, Lustre, …) and "
            "give every node the same path, or run on one node"), lines[0]
        assert "eva_plugin/" not in err, err[-3000:]  # no traceback of ours
    assert sorted(p.name for p in (nodes[0] / "run").iterdir()) == [".eva.lock"]  # no stage, no token
    assert not any(p.name != ".eva.lock" for p in (nodes[1] / "run").iterdir())
