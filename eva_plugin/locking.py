"""One run per output dir: an exclusive ``flock`` on ``<output_dir>/.eva.lock`` and an owner file.

Two locks, because a cluster filesystem may honour only one of them:

- ``flock`` on ``.eva.lock`` (never removed; it holds the owner's pid, host and start time for
  the refusal message). The kernel drops a ``flock`` when its process dies, so a killed run's
  lock is simply taken over. But Lustre mounted ``noflock`` (and some NFS setups) raise
  ``OSError`` instead, and Lustre ``localflock``, NFS ``nolock`` and BeeGFS by default lock
  one node only: a run on another node gets the same ``flock`` at the same time.
- ``.eva.lock.owner``, created with ``O_CREAT | O_EXCL`` (atomic on the file server, so every node
  sees it) and removed when the run ends — also on an exception, Ctrl-C, ``SIGTERM`` or
  ``SIGHUP``. It holds the owner's host, pid, start time, boot id, pid namespace and process
  start tick (so a reused pid is not taken for the owner) and a token of its own. A second run
  finds it and is refused while that run lives. One left by a run killed with ``SIGKILL`` (or a
  node that died) is stale: on the machine that wrote it, the owner's death is certain (its pid
  is gone or belongs to a newer process; for a run in another container, this process got the
  ``flock`` the owner held), and the file is taken over; from another machine it cannot be
  checked, and the run is refused with the ``rm`` command that clears it.

Taking over is serialised by a second ``O_EXCL`` file, ``.eva.lock.takeover``: its holder removes
the owner file only if it still carries the token of the stale run it judged, so of two processes
replacing the same stale file only one wins and a fresh owner is never removed. Under ``accelerate
launch`` only the main process takes the lock; the others wait for it at the run's first collective.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eva_plugin.errors import EvaError

logger = logging.getLogger(__name__)

LOCK = ".eva.lock"
OWNER = ".eva.lock.owner"
TAKEOVER = ".eva.lock.takeover"
#: Claims of the owner file before giving up (each failed claim took over a stale file or found it gone).
ATTEMPTS = 5
#: Seconds to wait for another process of this machine that is replacing the same stale owner file.
TAKEOVER_WAIT = 2.0
#: Signals whose default action kills the process: the owner file is removed first (then the default runs).
KILLING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class OutputDirInUseError(EvaError):
    """Another live run holds the output dir (or a lock this machine cannot check says so)."""


@contextmanager
def run_lock(root: Path, is_main: bool = True) -> Iterator[None]:
    """Hold ``root``'s run lock (main process only) and, once held, remove what killed runs left."""
    if not is_main:
        yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        flocked = _flock(root, fh)
        me = this_process(flocked)
        _claim(root, me)
        try:
            with _released_on_signal(root / OWNER, me["token"]):
                fh.seek(0)
                fh.truncate()
                json.dump({k: me[k] for k in ("pid", "host", "since")}, fh)
                fh.flush()
                os.fsync(fh.fileno())
                from eva_plugin.artifacts import remove_leftovers

                remove_leftovers(root)  # temporary folders and files of runs that were killed
                yield
        finally:
            _remove_own(root / OWNER, me["token"])
            if flocked:
                fh.seek(0)
                fh.truncate()
                fh.flush()
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _flock(root: Path, fh) -> bool:
    """Take the ``flock``: True when held, False where the filesystem has none; refuse when another run holds it."""
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        try:
            owner = json.loads(fh.read() or "{}")
        except ValueError:
            owner = {}
        raise OutputDirInUseError(_in_use(root, owner if isinstance(owner, dict) else {})) from None
    except OSError as err:  # ENOLCK, EOPNOTSUPP, ENOSYS: Lustre `noflock`, NFS without a lock manager
        logger.info("flock on %s is not available (%s); %s alone locks the output dir",
                    root / LOCK, os.strerror(err.errno or errno.ENOLCK), OWNER)
        return False
    return True


# --- who owns the folder --------------------------------------------------------------------------------


def this_process(flocked: bool = False) -> dict[str, Any]:
    """The owner record of this process: what another process needs to tell whether it still runs."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace(),
            "start": stat[1] if stat else None, "flock": flocked, "token": uuid.uuid4().hex}


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A Linux process's state letter and start time (clock ticks after boot); None when it does not exist
    (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_machine(owner: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether ``owner`` ran under this kernel (same boot id; the host name where there is no boot id)."""
    if owner.get("boot_id") or me["boot_id"]:
        return owner.get("boot_id") == me["boot_id"]
    return owner.get("host") == me["host"]


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the owner's process (of this machine and pid namespace) still runs; a reused pid is not it."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        stat = _proc_stat(pid)
        if stat is None or stat[0] in "ZX":  # gone, or a zombie waiting for its parent
            return False
        return owner.get("start") is None or stat[1] == owner["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def verdict(owner: dict[str, Any], me: dict[str, Any]) -> str:
    """``alive``, ``dead`` (stale: safe to take over) or ``unknown`` (another machine or container)."""
    if not _same_machine(owner, me):
        return "unknown"
    if owner.get("pid_ns") == me["pid_ns"]:
        return "alive" if _alive(owner) else "dead"
    if me["flock"] and owner.get("flock") is True:
        return "dead"  # another container's run held the flock this process now holds: it ended
    return "unknown"  # another container, which held no flock: its pids are not ours to check


# --- the owner file ---------------------------------------------------------------------------------------


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` if it does not exist (atomically); False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def _read_owner(path: Path, tries: int = 20) -> dict[str, Any] | None:
    """The record in ``path``; None when there is no file; ``{}`` when it stays unreadable (a claim that died
    between creating and writing it) — a file just created is given a moment to be written."""
    for attempt in range(tries):
        try:
            record = json.loads(path.read_text() or "null")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return record
        if attempt + 1 < tries:
            time.sleep(0.05)
    return {}


def _remove_own(path: Path, token: str) -> None:
    """Remove ``path`` if it is this process's (a file put there by someone else stays)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(owner, dict) and owner.get("token") == token:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # never hide the error that ended the run
            logger.warning("could not remove %s (%s); remove it before the next run", path, err)


def _claim(root: Path, me: dict[str, Any]) -> None:
    """Create the owner file, taking over a stale one of this machine; refuse a live or uncheckable owner."""
    path = root / OWNER
    for _ in range(ATTEMPTS):
        if _create(path, me):
            return
        owner = _read_owner(path)
        if owner is None:
            continue  # removed meanwhile: claim again
        if not owner.get("token"):
            raise OutputDirInUseError(f"output_dir {root} holds a lock file that names no run ({path} is empty or "
                                      f"damaged); if no run is using this folder, clear it with "
                                      f"`rm {shlex.quote(str(path))}` and start again")
        state = verdict(owner, me)
        if state == "alive":
            raise OutputDirInUseError(_in_use(root, owner))
        if state == "unknown":
            raise OutputDirInUseError(_unverifiable(root, owner, path))
        _take_over(root, owner, me)
    raise OutputDirInUseError(f"output_dir {root}: other runs kept claiming it ({path}); wait for them or choose "
                              "another output_dir")


def _take_over(root: Path, stale: dict[str, Any], me: dict[str, Any]) -> None:
    """Remove the owner file of the dead run ``stale``, unless another process replaced it meanwhile."""
    breaker, path = root / TAKEOVER, root / OWNER
    deadline = time.monotonic() + TAKEOVER_WAIT
    while not _create(breaker, me):
        if time.monotonic() > deadline:  # its holder died within the few instructions it needs it
            holder = _read_owner(breaker, tries=1) or {}
            raise OutputDirInUseError(
                f"output_dir {root}: pid {holder.get('pid', '?')} on host {holder.get('host', '?')} began to take "
                f"over a stale lock and did not finish; if no run is starting there, clear it with "
                f"`rm {shlex.quote(str(breaker))}` and start again")
        time.sleep(0.05)
    try:
        current = _read_owner(path, tries=1)
        if current and current.get("token") == stale["token"]:
            path.unlink(missing_ok=True)
            logger.info("took over the lock of pid %s (no longer running) in %s", stale.get("pid"), root)
    finally:
        _remove_own(breaker, me["token"])


# --- messages and signals ---------------------------------------------------------------------------------


def _in_use(root: Path, owner: dict[str, Any]) -> str:
    return (f"output_dir {root} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
            f"since {owner.get('since', '?')}; wait for it or choose another output_dir")


def _unverifiable(root: Path, owner: dict[str, Any], path: Path) -> str:
    return (f"output_dir {root} is locked by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since "
            f"{owner.get('since', '?')}, which this machine cannot check; if that run is gone (killed, or its "
            f"node died), clear the lock with `rm {shlex.quote(str(path))}` and start again, else wait for it or "
            "choose another output_dir")


@contextmanager
def _released_on_signal(path: Path, token: str) -> Iterator[None]:
    """While held: a signal that would kill the process at once (``SIGTERM`` from a scheduler, ``SIGHUP``)
    first removes the owner file, then kills it as before. Signals someone else handles are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def release_and_die(signum, frame) -> None:
        _remove_own(path, token)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    installed = []
    for sig in KILLING_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, release_and_die)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            if signal.getsignal(sig) is release_and_die:
                signal.signal(sig, signal.SIG_DFL)
