"""Crash-safe on-disk layout of a knowledge base.

``kb_root/<name>/`` holds immutable version folders ``v-*`` and a pointer file ``CURRENT``
naming the live one. A build writes a complete new version into a ``.tmp-*`` folder (docstore,
FAISS index, BM25 index, then ``manifest.json`` with the SHA-256 of every other file), fsyncs
it, renames it to ``v-*`` and finally swaps ``CURRENT`` with ``os.replace``. A build killed at
any moment therefore leaves ``CURRENT`` on the old, untouched version, and a reader only ever
sees one complete version.

Writers serialise on an exclusive lock file ``kb_root/.locks/<name>.lock``: beside the
knowledge base's folder, not inside it, so a writer waiting while ``drop`` renames the folder
away (to ``kb_root/.trash-*``, deleted right after) locks the same file as a writer started
after the drop (glmkb #20: the lock inside the folder let two writers in at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kb.errors import DamagedKnowledgeBaseError, KnowledgeBaseError
from kb.manifest import FORMAT, MANIFEST, Manifest, damaged, write_manifest
from kb.manifest import read_manifest as _read_manifest

POINTER = "CURRENT"
LOCK = ".lock"  # inside kb folders written before the lock moved to LOCK_DIR (ignored now)
LOCK_DIR = ".locks"
VERSION_PREFIX = "v-"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
OPEN_ATTEMPTS = 5  # versions followed while newer builds collect the one being read

T = TypeVar("T")

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: single writer is the user's job
    fcntl = None  # type: ignore[assignment]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pointer(kb_dir: Path) -> str | None:
    """Name of the live version folder, or None if the knowledge base was never committed."""
    try:
        name = (kb_dir / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # glmkb #20.16: it was reported as a damaged knowledge base
        raise KnowledgeBaseError(
            f"{kb_dir} is a file, not a knowledge base folder: choose another knowledge base name, "
            f"or move the file out of {kb_dir.parent}"
        ) from None
    except UnicodeDecodeError:
        name = "(not text)"
    except OSError as e:
        raise damaged(kb_dir.name, f"{kb_dir / POINTER} cannot be read ({e.strerror})") from None
    if not name.startswith(VERSION_PREFIX) or "/" in name or "\\" in name or ".." in name or not name.isprintable():
        raise damaged(kb_dir.name, f"{kb_dir / POINTER} is corrupted ({name!r})")
    return name


def open_current(kb_dir: Path, open_version: Callable[[str], T]) -> T | None:
    """``open_version(name)`` of the version ``CURRENT`` names, or None when there is none.

    Readers take no lock and garbage collection keeps only the live and the previous version, so
    two builds can publish and collect a version while it is being read (opening one hashes all
    its files): its files vanish and it reads as damaged. While ``CURRENT`` has moved on, the
    version it names now is read instead; damage that stays under ``CURRENT`` is raised. Run 16:
    a concurrent ``ingest build`` exited 3, "knowledge base 't' is damaged: .../bm25/
    data.csc.index.npy is missing", under load.
    """
    name = read_pointer(kb_dir)
    for attempt in range(OPEN_ATTEMPTS):
        if name is None:
            return None
        try:
            return open_version(name)
        except DamagedKnowledgeBaseError:
            newer = read_pointer(kb_dir)
            if newer == name or attempt == OPEN_ATTEMPTS - 1:
                raise
            name = newer
    return None  # not reached: the last attempt returns or raises


def is_knowledge_base(kb_dir: Path) -> bool:
    return (kb_dir / POINTER).is_file()


def pointer_lost(kb_dir: Path) -> DamagedKnowledgeBaseError | None:
    """The damage of a folder that holds versions but no ``CURRENT`` (deleted by hand, or a first
    build killed between renaming its version and writing ``CURRENT``), else None.

    Sweep 34: such a folder was taken for a new knowledge base, so the next ``ingest build`` wrote a
    version of the new files alone and its garbage collection deleted every older version.
    """
    try:
        if (kb_dir / POINTER).exists() or not versions(kb_dir):
            return None
    except (FileNotFoundError, NotADirectoryError):  # no folder, or a file by that name
        return None
    return damaged(kb_dir.name, f"{kb_dir / POINTER} is missing but {kb_dir} holds versions")


def lock_path(kb_dir: Path) -> Path:
    """The writer lock of the knowledge base in ``kb_dir``: ``kb_root/.locks/<name>.lock``."""
    return kb_dir.parent / LOCK_DIR / f"{kb_dir.name}.lock"


@contextlib.contextmanager
def write_lock(kb_dir: Path) -> Iterator[None]:
    """Hold the knowledge base's writer lock (other writers wait; readers never do).

    The lock file is never deleted (a writer may be waiting on it) and lives outside
    ``kb_dir``, which may not exist yet or may be renamed away by ``drop`` meanwhile: whoever
    gets the lock re-reads the folder before writing.
    """
    path = lock_path(kb_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def new_staging_dir(kb_dir: Path) -> Path:
    path = kb_dir / f"{TMP_PREFIX}{secrets.token_hex(6)}"
    path.mkdir()
    return path


def read_manifest(version_dir: Path, *, kb_name: str | None = None, verify: bool = True) -> Manifest:
    """The checked manifest of a version, after checking every file against its recorded SHA-256."""
    name = kb_name or version_dir.parent.name
    manifest = _read_manifest(version_dir, kb_name=name)
    if verify:
        verify_files(version_dir, manifest.files, kb_name=name)
    return manifest


def verify_files(version_dir: Path, files: dict[str, str], *, kb_name: str | None = None) -> None:
    """Every file a manifest lists exists inside ``version_dir`` with its recorded SHA-256."""
    name = kb_name or version_dir.parent.name
    if not files:
        raise damaged(name, f"the manifest of {version_dir} lists no files")
    for rel, expected in files.items():
        target = (version_dir / rel).resolve()
        if version_dir.resolve() not in target.parents:
            raise damaged(name, f"the manifest of {version_dir} names a file outside it ({rel!r})")
        if not target.is_file():
            raise damaged(name, f"{target} is missing")
        try:
            actual = file_sha256(target)
        except OSError as e:
            raise damaged(name, f"{target} cannot be read ({e.strerror})") from None
        if actual != expected:
            raise damaged(name, f"{target} does not match the hash in its manifest (modified or damaged)")


def hash_files(version_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in a staged version (the manifest itself excluded)."""
    out: dict[str, str] = {}
    for path in sorted(version_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[path.relative_to(version_dir).as_posix()] = file_sha256(path)
    return out


def publish(kb_dir: Path, staging: Path, manifest: dict[str, Any]) -> str:
    """Seal ``staging`` (manifest last, everything fsynced), rename it to a version folder and
    atomically point ``CURRENT`` at it. Returns the version name."""
    write_manifest(staging, {**manifest, "format": FORMAT, "files": hash_files(staging)})
    _fsync_tree(staging)
    version = f"{VERSION_PREFIX}{time.time_ns():020d}-{secrets.token_hex(3)}"
    os.replace(staging, kb_dir / version)
    _fsync_dir(kb_dir)
    point_at(kb_dir, version)
    return version


def point_at(kb_dir: Path, version: str) -> None:
    """Atomically make ``version`` the live one (``CURRENT`` replaced, fsynced)."""
    tmp_pointer = kb_dir / f"{TMP_PREFIX}{POINTER}-{secrets.token_hex(3)}"
    with tmp_pointer.open("w", encoding="utf-8") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_pointer, kb_dir / POINTER)
    _fsync_dir(kb_dir)


def collect_garbage(kb_dir: Path, *, keep: set[str]) -> None:
    """Delete staging leftovers and old versions (call with the writer lock held).

    The previous version is kept too, so a reader that read ``CURRENT`` just before the swap
    can still finish opening it.
    """
    for path in kb_dir.iterdir():
        if path.name in keep or path.name in (POINTER, LOCK):
            continue
        if path.name.startswith(TMP_PREFIX) or path.name.startswith(VERSION_PREFIX):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def versions(kb_dir: Path) -> list[str]:
    """Committed version folders, oldest first."""
    return sorted(p.name for p in kb_dir.iterdir() if p.is_dir() and p.name.startswith(VERSION_PREFIX))


def kb_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that are knowledge bases: a valid name (never ``.trash-*``,
    ``.locks`` or another hidden folder) holding a ``CURRENT`` file or versions (possibly damaged)."""
    from kb.names import is_valid_kb_name

    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_valid_kb_name(p.name) and p.is_dir() and _holds_kb(p))


def _holds_kb(kb_dir: Path) -> bool:
    """A ``CURRENT`` file, or versions without one (listed as damaged, never hidden: sweep 34)."""
    return is_knowledge_base(kb_dir) or pointer_lost(kb_dir) is not None


def move_to_trash(kb_dir: Path) -> Path:
    """Rename a knowledge base's folder away atomically (call with its writer lock held)."""
    trash = kb_dir.parent / f"{TRASH_PREFIX}{kb_dir.name}-{os.getpid()}-{time.time_ns()}"
    os.replace(kb_dir, trash)
    _fsync_dir(kb_dir.parent)
    return trash


def clean_trash(root: Path) -> None:
    """Delete ``.trash-*`` folders left by drops killed before they finished (glmkb #20: a
    ``kill -9`` mid-drop left one that every listing showed as a knowledge base)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith(TRASH_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for path in [*(p for p in root.rglob("*") if p.is_dir()), root]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
