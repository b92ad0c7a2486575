"""Crash-safe on-disk layout of a knowledge base.

``kb_root/<name>/`` holds immutable version folders ``v-*`` and a pointer file ``CURRENT``
naming the live one. A build writes a complete new version into a ``.tmp-*`` folder (docstore,
FAISS index, BM25 index, then ``manifest.json`` with the SHA-256 of every other file), fsyncs
it, renames it to ``v-*`` and finally swaps ``CURRENT`` with ``os.replace``. A build killed at
any moment therefore leaves ``CURRENT`` on the old, untouched version, and a reader only ever
sees one complete version. Writers serialise on an exclusive lock file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.errors import KnowledgeBaseError

POINTER = "CURRENT"
MANIFEST = "manifest.json"
LOCK = ".lock"
VERSION_PREFIX = "v-"
TMP_PREFIX = ".tmp-"
FORMAT = 1

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
    except UnicodeDecodeError:
        name = "(not text)"
    if not name.startswith(VERSION_PREFIX) or "/" in name or "\\" in name or ".." in name or not name.isprintable():
        raise KnowledgeBaseError(f"{kb_dir / POINTER} is corrupted ({name!r}); rebuild the knowledge base")
    return name


def is_knowledge_base(kb_dir: Path) -> bool:
    return (kb_dir / POINTER).is_file()


@contextlib.contextmanager
def write_lock(kb_dir: Path) -> Iterator[None]:
    """Hold the knowledge base's writer lock (other writers wait; readers never do)."""
    kb_dir.mkdir(parents=True, exist_ok=True)
    with (kb_dir / LOCK).open("a") as handle:
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


def read_manifest(version_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a version, after checking every file against its recorded SHA-256."""
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise KnowledgeBaseError(f"{path} is missing; the knowledge base is damaged, rebuild it") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KnowledgeBaseError(f"{path} is not valid JSON; the knowledge base is damaged, rebuild it") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise KnowledgeBaseError(f"{path} is not a glmkb manifest (format {FORMAT}); rebuild the knowledge base")
    if verify:
        verify_files(version_dir, manifest["files"])
    return manifest


def verify_files(version_dir: Path, files: dict[str, str]) -> None:
    for rel, expected in files.items():
        target = (version_dir / rel).resolve()
        if version_dir.resolve() not in target.parents:
            raise KnowledgeBaseError(f"manifest of {version_dir} names a file outside it ({rel!r}); rebuild the knowledge base")
        if not target.is_file():
            raise KnowledgeBaseError(f"{target} is missing; the knowledge base is damaged, rebuild it")
        if file_sha256(target) != expected:
            raise KnowledgeBaseError(
                f"{target} does not match the hash in its manifest (modified or damaged); "
                "the knowledge base will not be loaded: rebuild it (ingest drop, then ingest build)"
            )


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
    manifest = {**manifest, "format": FORMAT, "files": hash_files(staging)}
    (staging / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    _fsync_tree(staging)
    version = f"{VERSION_PREFIX}{time.time_ns():020d}-{secrets.token_hex(3)}"
    os.replace(staging, kb_dir / version)
    _fsync_dir(kb_dir)
    tmp_pointer = kb_dir / f"{TMP_PREFIX}{POINTER}-{secrets.token_hex(3)}"
    with tmp_pointer.open("w", encoding="utf-8") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_pointer, kb_dir / POINTER)
    _fsync_dir(kb_dir)
    return version


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
