"""Every process of a launch must see one run folder: checked once, when a run starts.

Each process reads what the main process wrote there (a stage's artifact, ``iter_<t-1>/policy``),
so under a launch over several nodes ``output_dir`` must be on a filesystem all of them share.
The check: the main process writes a random token into ``<output_dir>/.eva-shared-check.json``
(atomically), every process reads it back and the readings are gathered over the launch's gloo
group; a process that does not find the main process's token stops the run on every process, in
one line that names it, its host and its view of the folder. The main process removes the token.

A network filesystem may show a new file to another node a little late (an NFS client caches
what it last saw of a folder for up to ``acdirmin``, 30 s by default), so a process that does not
see the token yet looks again for up to ``EVA_SHARED_FOLDER_WAIT`` seconds (default 30) before
it reports it missing. A run on one process skips the check.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from eva_plugin.artifacts import write_json_atomic
from eva_plugin.errors import EvaError

TOKEN = ".eva-shared-check.json"
WAIT_ENV = "EVA_SHARED_FOLDER_WAIT"
DEFAULT_WAIT = 30.0
MISSING = "missing"


class FolderNotSharedError(EvaError):
    """Some process of the launch sees another folder (or none) at ``output_dir``."""


def check_shared_folder(runtime, root: Path) -> None:
    """Stop every process unless all of them read the token the main process wrote in ``root``.

    ``runtime`` is the run's ``StageRuntime``: its main process writes the token, its ``shards``
    gather what every process read. Call it on every process, at the same point (the run's start,
    with the run lock held)."""
    if runtime.state.num_processes == 1:
        return
    root = Path(root)
    token, wait = runtime.on_main(lambda: _write_token(root), share=True)
    try:
        readings = runtime.shards.gather(_reading(root, token, wait))
    finally:
        if runtime.is_main:
            (root / TOKEN).unlink(missing_ok=True)
    problem = not_shared(root, token, readings)
    if problem:
        raise FolderNotSharedError(problem)


def wait_seconds() -> float:
    """How long a process looks for the token: ``$EVA_SHARED_FOLDER_WAIT`` seconds, else 30."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise EvaError(f"{WAIT_ENV}={raw!r} is not a number of seconds >= 0; unset it for the default "
                       f"({DEFAULT_WAIT:g}) or give e.g. {WAIT_ENV}=60")
    return value


def _write_token(root: Path) -> tuple[str, float]:
    """On the main process: a fresh token in ``root/TOKEN``; the token and the wait (the main
    process's, so that every process waits alike)."""
    wait = wait_seconds()
    token = secrets.token_hex(16)
    write_json_atomic(root / TOKEN, {"token": token, "host": socket.gethostname(), "pid": os.getpid()})
    return token, wait


def read_token(root: Path) -> str:
    """The token in ``root/TOKEN`` as this process sees it: the token, ``missing``, or ``unreadable (…)``."""
    try:
        os.listdir(root)  # listing the folder makes an NFS client look at it afresh
        return str(json.loads((root / TOKEN).read_text())["token"])
    except FileNotFoundError:
        return MISSING
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({type(err).__name__}: {err})"


def _reading(root: Path, token: str, wait: float) -> dict[str, str]:
    """What this process reports: its host, its view of ``root`` and the token it read there,
    looking again for up to ``wait`` seconds while it is not the main process's."""
    deadline = time.monotonic() + wait
    seen = read_token(root)
    while seen != token and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = read_token(root)
    return {"host": socket.gethostname(), "path": str(root.resolve()), "seen": seen}


def not_shared(root: Path, token: str, readings: list[dict[str, str]]) -> str | None:
    """The one-line refusal when some process did not read ``token`` (``readings`` by rank), else None."""
    bad = [(rank, r) for rank, r in enumerate(readings) if r["seen"] != token]
    if not bad:
        return None
    views: dict[tuple[str, str, str], list[int]] = {}
    for rank, r in bad:
        seen = r["seen"] if r["seen"] == MISSING or r["seen"].startswith("unreadable") else "another run's token"
        views.setdefault((r["host"], r["path"], seen), []).append(rank)
    where = "; ".join(f"{_ranks(ranks)} on host {host} ({path}: {seen})" for (host, path, seen), ranks in views.items())
    main = readings[0]
    return (f"output_dir {root} is not one folder for every process: {where} cannot read the file the main "
            f"process (host {main['host']}) wrote in {main['path']}; put output_dir on a filesystem shared by all "
            f"nodes (NFS, Lustre, …) and give every node the same path, or run on one node")


def _ranks(ranks: list[int]) -> str:
    """``rank 3`` or ``ranks 8-15, 17``."""
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"
