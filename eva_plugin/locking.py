"""One run per output dir: an exclusive ``flock`` on ``<output_dir>/.eva.lock``.

The lock file holds the owner's pid, host and start time, for the refusal message. The
kernel releases a ``flock`` when its process dies, so a lock file left by a killed run is
present but unlocked: the next run simply takes it over. Under ``accelerate launch`` only
the main process takes the lock; the others wait for it at the run's first collective.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eva_plugin.errors import EvaError

LOCK = ".eva.lock"


class OutputDirInUseError(EvaError):
    """Another live run holds the output dir."""


@contextmanager
def run_lock(root: Path, is_main: bool = True) -> Iterator[None]:
    """Hold ``root``'s run lock (main process only) and, once held, remove what killed runs left."""
    if not is_main:
        yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUseError(_refusal(root, fh)) from None
        fh.seek(0)
        fh.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
        fh.flush()
        os.fsync(fh.fileno())
        from eva_plugin.artifacts import remove_leftovers

        remove_leftovers(root)  # temporary folders and files of runs that were killed
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

def _refusal(root: Path, fh) -> str:
    fh.seek(0)
    try:
        owner = json.loads(fh.read() or "{}")
    except ValueError:
        owner = {}
    return (f"output_dir {root} is in use by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
            f"since {owner.get('since', '?')}; wait for it or choose another output_dir")
