"""The run lock on filesystems with and without a working ``flock``.

The holders are real processes (``HOLDER`` below) that take the lock and keep it until the test
closes their stdin, or die by a real signal. "noflock" stands for Lustre ``noflock`` / NFS
without a lock manager: ``fcntl.flock`` raises ``OSError(ENOLCK)``, as the kernel does there (the
one thing a machine with local disks cannot produce). A holder without the ``flock`` seen by a
process that gets it is also what a node-local ``flock`` (Lustre ``localflock``, NFS ``nolock``)
looks like from a second node.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eva_plugin import locking
from eva_plugin.errors import EvaError
from eva_plugin.locking import LOCK, OWNER, TAKEOVER, OutputDirInUseError, run_lock, this_process

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import errno, fcntl, sys, time
from pathlib import Path

if sys.argv[2] == "noflock":
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    fcntl.flock = flock
if len(sys.argv) > 3:  # start together with the other holders
    while not Path(sys.argv[3]).exists():
        time.sleep(0.005)

from eva_plugin import locking
from eva_plugin.locking import run_lock

if len(sys.argv) > 4:  # judge an owner slowly: every holder has judged the stale owner before any acts
    judge = locking.verdict

    def slow_verdict(owner, me):
        time.sleep(float(sys.argv[4]))
        return judge(owner, me)

    locking.verdict = slow_verdict

try:
    with run_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin
except Exception as err:
    print(f"refused: {err}", flush=True)
"""


def no_flock(monkeypatch) -> None:
    """This process's ``flock`` fails as on a filesystem without one."""

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def holder(out: Path, mode: str, go: Path | None = None, judging: float | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", HOLDER, str(out), mode, *([str(go)] if go else []),
            *([str(judging)] if judging is not None else [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def held(out: Path, mode: str) -> subprocess.Popen:
    proc = holder(out, mode)
    assert proc.stdout.readline().strip() == "held"
    return proc


def owner(out: Path) -> dict:
    return json.loads((out / OWNER).read_text())


@pytest.mark.parametrize("mode", ["flock", "noflock"])
def test_the_owner_file_exists_while_a_run_holds_the_folder_and_is_removed_after(tmp_path, monkeypatch, mode):
    if mode == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    with run_lock(out):
        record = owner(out)
        assert record["pid"] == os.getpid() and record["flock"] is (mode == "flock")
        in_use = rf"is in use by pid {os.getpid()} on host "
        with pytest.raises(OutputDirInUseError, match=in_use), run_lock(out):
            pass
        assert owner(out)["token"] == record["token"]  # the refused run left the holder's file alone
    assert not (out / OWNER).exists()
    assert (out / LOCK).exists()  # the flock file stays: removing it would let two runs lock two files
    with run_lock(out):  # free again
        pass


@pytest.mark.parametrize("mode", ["flock", "noflock"])
@pytest.mark.parametrize("ending", [RuntimeError, KeyboardInterrupt])
def test_the_owner_file_goes_when_the_run_fails_or_is_interrupted(tmp_path, monkeypatch, mode, ending):
    if mode == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ending), run_lock(out):
        raise ending("stop")
    assert not (out / OWNER).exists()
    with run_lock(out):
        pass


@pytest.mark.parametrize("mine", ["flock", "noflock"])
def test_a_live_holder_without_flock_is_refused_with_or_without_flock(tmp_path, monkeypatch, mine):
    """The holder could not take the flock (none on its node, or a node-local one): the owner file alone
    keeps a second run out, whether or not that run gets the flock."""
    if mine == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    proc = held(out, "noflock")
    try:
        with pytest.raises(OutputDirInUseError) as err, run_lock(out):
            pass
        assert str(err.value).startswith(f"output_dir {out} is in use by pid {proc.pid} on host ")
        assert "\n" not in str(err.value)
        assert owner(out)["pid"] == proc.pid
    finally:
        proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not (out / OWNER).exists()  # the holder removed its file as it left
    with run_lock(out):
        assert owner(out)["pid"] == os.getpid()


@pytest.mark.parametrize("mode", ["flock", "noflock"])
def test_the_owner_file_of_a_killed_run_on_this_machine_is_taken_over(tmp_path, monkeypatch, mode):
    if mode == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    proc = held(out, mode)
    proc.kill()  # SIGKILL: nothing of the run's own code runs
    proc.wait(timeout=30)
    dead = owner(out)
    assert dead["pid"] == proc.pid
    with run_lock(out):
        assert owner(out)["pid"] == os.getpid()
    assert not (out / OWNER).exists() and not (out / TAKEOVER).exists()


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path, monkeypatch):
    no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    me = this_process()
    assert me["start"] is not None  # Linux: the process start tick is recorded
    # the owner's pid now belongs to this (newer) process: a different start tick
    (out / OWNER).write_text(json.dumps({**me, "start": me["start"] - 1, "token": "stale"}))
    with run_lock(out):
        assert owner(out)["token"] != "stale"
    (out / OWNER).write_text(json.dumps({**me, "token": "alive"}))  # the same pid and start: alive
    with pytest.raises(OutputDirInUseError, match="is in use by pid"), run_lock(out):
        pass


@pytest.mark.parametrize("mode", ["flock", "noflock"])
@pytest.mark.parametrize("elsewhere", [{"host": "node-b", "boot_id": "b0b0b0b0-0000-4000-8000-000000000000"},
                                       {"pid_ns": "pid:[1]"}])  # another machine; another container here
def test_an_owner_this_machine_cannot_check_is_refused_with_the_command_to_clear_it(tmp_path, monkeypatch, mode,
                                                                                    elsewhere):
    if mode == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    record = {**this_process(), "pid": 4242, "start": 7, "flock": False, "since": "2026-01-02T03:04:05",
              "token": "theirs", **elsewhere}
    (out / OWNER).write_text(json.dumps(record))
    with pytest.raises(OutputDirInUseError) as err, run_lock(out):
        pass
    message = str(err.value)
    assert "\n" not in message
    assert f"locked by pid 4242 on host {record['host']} since 2026-01-02T03:04:05" in message
    assert f"`rm {shlex.quote(str(out / OWNER))}`" in message
    assert owner(out)["token"] == "theirs"  # never removed without the user
    (out / OWNER).unlink()  # what the message says
    with run_lock(out):
        pass


@pytest.mark.parametrize("mode", ["flock", "noflock"])
def test_a_run_of_another_container_that_held_the_flock_is_over_once_the_flock_is_free(tmp_path, monkeypatch, mode):
    """Its pid is not ours to check, but on one kernel the flock it held is: free means it ended."""
    if mode == "noflock":
        no_flock(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / OWNER).write_text(json.dumps({**this_process(True), "pid_ns": "pid:[1]", "pid": 4242, "token": "theirs"}))
    if mode == "flock":
        with run_lock(out):
            assert owner(out)["pid"] == os.getpid()
    else:  # this process has no flock to tell
        with pytest.raises(OutputDirInUseError, match="cannot check"), run_lock(out):
            pass


def test_a_damaged_owner_file_is_refused_with_the_command_to_clear_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / OWNER).write_text("")  # a claim that died between creating and writing the file
    with pytest.raises(EvaError, match=rf"names no run .* `rm {shlex.quote(str(out / OWNER))}`"), run_lock(out):
        pass


def test_of_several_processes_taking_over_the_same_stale_file_one_wins(tmp_path):
    """Four processes without flock start together on a folder whose owner died: exactly one holds it. Each
    takes 0.3 s to judge an owner, so all of them find the dead owner before any of them replaces it."""
    out, go = tmp_path / "out", tmp_path / "go"
    out.mkdir()
    (out / OWNER).write_text(json.dumps({**this_process(), "start": -1, "token": "stale"}))  # pid reused: dead
    procs = [holder(out, "noflock", go, judging=0.3) for _ in range(4)]
    try:
        time.sleep(1.0)  # let them import and wait for the start
        go.touch()
        lines = [p.stdout.readline().strip() for p in procs]
        winners = [p for p, line in zip(procs, lines) if line == "held"]
        assert len(winners) == 1, lines
        assert owner(out)["pid"] == winners[0].pid
        for line in lines:
            assert line == "held" or line.startswith(f"refused: output_dir {out} is in use by pid {winners[0].pid}")
        assert not (out / TAKEOVER).exists()
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert not (out / OWNER).exists()


def test_a_takeover_left_unfinished_is_refused_with_the_command_to_clear_it(tmp_path, monkeypatch):
    no_flock(monkeypatch)
    monkeypatch.setattr(locking, "TAKEOVER_WAIT", 0.2)
    out = tmp_path / "out"
    out.mkdir()
    me = this_process()
    (out / OWNER).write_text(json.dumps({**me, "start": -1, "token": "stale"}))
    (out / TAKEOVER).write_text(json.dumps({**me, "pid": 4243, "token": "dead-breaker"}))
    clear = rf"pid 4243 .* `rm {shlex.quote(str(out / TAKEOVER))}`"
    with pytest.raises(OutputDirInUseError, match=clear), run_lock(out):
        pass
    assert owner(out)["token"] == "stale"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_scheduler_signal_removes_the_owner_file_and_still_ends_the_run(tmp_path, sig):
    out = tmp_path / "out"
    proc = held(out, "flock")
    assert owner(out)["pid"] == proc.pid
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == -sig  # killed by the signal, as without the lock
    assert not (out / OWNER).exists()
