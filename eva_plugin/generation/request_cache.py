"""Answers of a remote server kept on disk, so a rerun of a killed or failed stage does not pay for them again.

A cache is a folder (``iter_<t>/.<stage>.requests/``, see ``artifacts.requests_dir``) holding
``answers.jsonl``: one line per answered request, ``{"key": ..., "body": ...}``, appended and fsynced
before the answer is used, so whatever a killed run was answered is on disk. The key is the sha256 of
what decides the answer (the endpoint URL and the request body: model, messages, n, sampling parameters,
seed), never the headers, so the API key is neither in the file nor needed to read it. A line cut by a kill
is dropped when the file is opened (and cut off, so the next append starts on a fresh line).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

ANSWERS = "answers.jsonl"


def request_key(url: str, payload: dict[str, Any]) -> str:
    """The hash that names a request: its endpoint and its JSON body (keys sorted), nothing else."""
    blob = json.dumps({"url": url, "body": payload}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """``get(key)`` an earlier answer, ``put(key, body)`` a new one (durable when it returns). Thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / ANSWERS
        self._lock = threading.Lock()
        self._answers: dict[str, dict] = {}
        self._fh = None

    def _open(self) -> None:
        """Read the answers on first use and keep the file open for appending."""
        if self._fh is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        good = 0  # bytes up to the end of the last complete line
        if self.file.exists():
            with open(self.file, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # cut by a kill mid-write
                    good += len(line)
                    try:
                        entry = json.loads(line)
                        self._answers[str(entry["key"])] = entry["body"]
                    except (ValueError, KeyError, TypeError):
                        continue
            if good < self.file.stat().st_size:
                os.truncate(self.file, good)
        new = not self.file.exists()
        self._fh = open(self.file, "ab")  # noqa: SIM115 (kept open for appends; closed by close())
        if new:  # the file's name must survive a crash too
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def __len__(self) -> int:
        with self._lock:
            self._open()
            return len(self._answers)

    def get(self, key: str) -> dict | None:
        with self._lock:
            self._open()
            return self._answers.get(key)

    def put(self, key: str, body: dict) -> None:
        """Append the answer and fsync it: once this returns, a killed run's rerun finds it."""
        line = json.dumps({"key": key, "body": body}, ensure_ascii=False) + "\n"
        with self._lock:
            self._open()
            self._fh.write(line.encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._answers[key] = body

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
