"""The folder archives of documents are unpacked into while they are added: beside the knowledge bases.

Not the system's temporary folder, for two reasons:

- ``/tmp`` is often a RAM-backed tmpfs (Fedora, Arch, Ubuntu from 24.10): a 5 GB archive unpacked
  there takes 5 GB of memory, where ``kb_root`` is on the disk that must hold the knowledge base
  anyway;
- a build killed with SIGKILL (or a server killed mid-upload) cannot remove its folder: every
  killed build left one in ``/tmp`` for good (about 500 empty ones a CI run, from the kill tests).

So each folder is ``kb_root/.unpacked-<random>``, removed when the work ends, and its owner holds an
exclusive lock on the ``.owner`` file inside it while it lives. The kernel drops the lock when the
process dies, however it dies, so whoever unpacks next removes every folder whose lock it can take:
no process ids (reused, or another container's), no host names (a ``kb_root`` on a network share).
A folder still without its ``.owner`` is being made, unless it is older than ``MAKING_S``. Listings
never show these folders: a knowledge base's name cannot start with a dot.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: leftovers stay (as they did in the temp folder)
    fcntl = None  # type: ignore[assignment]

PREFIX = ".unpacked-"
OWNER = ".owner"
MAKING_S = 60.0  # a folder without its lock file this long is a leftover (killed between mkdir and lock)


@contextlib.contextmanager
def unpacking_folder(root: Path) -> Iterator[Path]:
    """A fresh folder under ``root`` for one call's unpacked archives, deleted when it ends."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    try:
        with _owned(path):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(root: Path) -> list[str]:
    """Delete the unpacking folders under ``root`` whose owner is gone; returns their names."""
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        with contextlib.suppress(OSError):  # removed meanwhile by another process's sweep
            if path.is_dir() and _is_stale(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


@contextlib.contextmanager
def _owned(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``path``'s ``.owner`` file."""
    with open(path / OWNER, "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _is_stale(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        handle = open(path / OWNER)
    except FileNotFoundError:
        return time.time() - path.stat().st_mtime > MAKING_S
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is at work
        return True
