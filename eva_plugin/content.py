"""What a local input holds, as an id for fingerprints: a file's or a folder's content hash.

Resuming trusts a stage only when its inputs are the same; a path says nothing about what is at
it now. ``content_id`` hashes a file, or a folder (its files' relative names and hashes), so a
prompt file or a model's weights replaced at the same path make the stages that read it stale.
Hashing is paid once per file version: the per-file hash is cached under the user's cache dir
(``hashes.json`` in ``$EVA_PLUGIN_CACHE``, else ``$XDG_CACHE_HOME/eva_plugin``) keyed by the file's path,
size, mtime, ctime and inode, and written atomically (processes that race lose nothing but work).
A name that is no local path (a hub id, a server name) is its own id.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

CHUNK = 1 << 22  # 4 MiB: large weight files are read in chunks
_lock = threading.Lock()
_memory: dict[str, dict[str, str]] = {}  # cache file → {file key: sha256}
_loaded: set[str] = set()


def cache_path() -> Path:
    """The hash cache, beside the converted embedded checkpoints (``$EVA_PLUGIN_CACHE``, else
    ``$XDG_CACHE_HOME/eva_plugin``)."""
    from eva_plugin.embedded import cache_root

    return cache_root() / "hashes.json"


def _key(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def hash_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _entries(cache: Path) -> dict[str, str]:
    name = str(cache)
    if name not in _loaded:
        _loaded.add(name)
        try:
            data = json.loads(cache.read_text())
            _memory.setdefault(name, {}).update(data if isinstance(data, dict) else {})
        except (OSError, ValueError):
            _memory.setdefault(name, {})
    return _memory[name]


def _save(cache: Path, entries: dict[str, str]) -> None:
    """Merge with what is on disk now (another process may have added entries) and replace atomically."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            on_disk = json.loads(cache.read_text())
            merged = {**(on_disk if isinstance(on_disk, dict) else {}), **entries}
        except (OSError, ValueError):
            merged = dict(entries)
        fd, tmp = tempfile.mkstemp(prefix=".hashes.", suffix=".tmp", dir=cache.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(merged, fh, sort_keys=True)
            os.replace(tmp, cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:  # a read-only cache dir costs a rehash next time, never the run
        pass


def file_hash(path: str | os.PathLike, *, cache: Path | None = None) -> str:
    """The cached sha256 of one file (hashed again only when its size, mtime, ctime or inode changed)."""
    path = Path(path).resolve()
    cache = cache or cache_path()
    with _lock:
        entries = _entries(cache)
        key = _key(path, path.stat())
        if key in entries:
            return entries[key]
        value = hash_file(path)
        entries[key] = value
        _save(cache, {key: value})
        return value


def content_id(name: str | os.PathLike | None) -> str | None:
    """``sha256:<hex>`` of a local file or folder's content; any other name (hub id, server) as it is.

    A folder's id covers the relative names and hashes of all its files (hidden ones such as
    ``.cache`` or ``.git`` left out): renaming, adding, removing or changing a file changes it.
    """
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return "sha256:" + file_hash(path)
    if not path.is_dir():
        return str(name)
    digest = hashlib.sha256()
    for file in sorted(_files(path)):
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{file_hash(file)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return found


def local_id(name: str | os.PathLike | None) -> str | None:
    """The name, with its content id when it is a local path (for fingerprints)."""
    if name is None:
        return None
    cid = content_id(name)
    return str(name) if cid == str(name) else f"{name}@{cid}"
