"""The folder archives of documents are unpacked into while they are added: beside the knowledge bases.

Not the system's temporary folder, for two reasons:

- ``/tmp`` is often a RAM-backed tmpfs (Fedora, Arch, Ubuntu from 24.10): a 5 GB archive unpacked
  there takes 5 GB of memory, where ``kb_root`` is on the disk that must hold the knowledge base
  anyway;
- a build killed with SIGKILL (or a server killed mid-upload) cannot remove its folder: every
  killed build left one in ``/tmp`` for good (about 500 empty ones a CI run, from the kill tests).

So each folder is ``kb_root/.unpacked-<pid>@<host>.<random>``, removed when the work ends, and
whoever unpacks next removes those of processes on this host that are gone. Folders of other
hosts (a ``kb_root`` on a network share) are left to their own host. Listings never show them:
a knowledge base's name cannot start with a dot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = ".unpacked-"


@contextlib.contextmanager
def unpacking_folder(root: Path) -> Iterator[Path]:
    """A fresh folder under ``root`` for one call's unpacked archives, deleted when it ends."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}@{socket.gethostname()}.", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale(root: Path) -> list[str]:
    """Delete the unpacking folders under ``root`` whose process, on this host, is gone; their names."""
    removed = []
    for path in root.glob(f"{PREFIX}*"):
        owner = _owner(path.name)
        if owner is not None and owner[1] == socket.gethostname() and not _alive(owner[0]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _owner(name: str) -> tuple[int, str] | None:
    """(pid, host) from ``.unpacked-<pid>@<host>.<random>``; None for a name not of that form."""
    pid, at, rest = name[len(PREFIX) :].partition("@")
    host, dot, _ = rest.rpartition(".")
    if not (at and dot and pid.isdigit()):
        return None
    return int(pid), host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
