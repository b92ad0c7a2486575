"""One published version of a knowledge base, opened for reading.

A :class:`LoadedVersion` holds the version's parsed manifest, its read-only docstore, its
vectors and (loaded on first keyword search) its BM25 index. Readers :meth:`~LoadedVersion.use`
it; once a newer version replaces it, it is :meth:`~LoadedVersion.retire`\\ d and its SQLite file
is closed as soon as the last reader is done (glmkb #20: long-running servers held 16-29
deleted docstores, 149-275 MiB, open after 40 builds when they were left to garbage collection).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kb import storage
from kb.bm25_index import BM25Index
from kb.dense_store import DenseIndex, DenseStore
from kb.docstore import Docstore
from kb.errors import KnowledgeBaseError, StaleVersionError
from kb.manifest import Manifest

DOCSTORE_FILE = "docstore.sqlite"
BM25_DIR = "bm25"


class LoadedVersion:
    """A verified version folder opened for searching and reading."""

    def __init__(self, name: str, path: Path, manifest: Manifest, docstore: Docstore, dense: DenseIndex | None) -> None:
        self.name = name
        self.path = path
        self.manifest = manifest
        self.docstore = docstore
        self.dense = dense
        self._bm25: BM25Index | None = None
        self._lock = threading.Lock()
        self._readers = 0
        self._retired = False
        self.closed = False

    @property
    def bm25(self) -> BM25Index:
        """The version's BM25 index, read from its files on first use (a build never needs it)."""
        with self._lock:
            if self._bm25 is None:
                ids = np.asarray(self.docstore.chunk_ids(), dtype=np.int64)
                if not (self.path / BM25_DIR).is_dir() and len(ids):
                    raise StaleVersionError(f"version {self.name} was deleted by newer builds; search again")
                self._bm25 = BM25Index.load(self.path / BM25_DIR, ids)
            return self._bm25

    def release_bm25(self) -> None:
        """Forget the loaded BM25 index (a build does this before building the next one, so the
        two never sit in memory together; a search meanwhile loads it again)."""
        with self._lock:
            self._bm25 = None

    @property
    def faiss_index(self) -> Any | None:
        """The raw ``faiss`` index of a FAISS-backed version (None otherwise)."""
        return getattr(self.dense, "index", None)

    def acquire(self) -> None:
        """Start reading from this version (pair with :meth:`release`)."""
        with self._lock:
            if self.closed:
                raise StaleVersionError(f"version {self.name} was closed; search again")
            self._readers += 1

    def release(self) -> None:
        """Done reading; a retired version closes when its last reader releases it."""
        with self._lock:
            self._readers -= 1
            close = self._retired and self._readers == 0 and not self.closed
            if close:
                self.closed = True
        if close:
            self.docstore.close()

    @contextlib.contextmanager
    def use(self) -> Iterator[LoadedVersion]:
        """Read from this version; a retired version stays open until its last reader is done."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def retire(self) -> None:
        """A newer version replaced this one: close it now, or when its last reader finishes."""
        with self._lock:
            self._retired = True
            close = self._readers == 0 and not self.closed
            if close:
                self.closed = True
            self._bm25 = None
        if close:
            self.docstore.close()


def open_version(
    kb_dir: Path, name: str, *, kb_name: str, dense_index: Callable[[Path, Manifest, int], DenseIndex | None]
) -> LoadedVersion:
    """Verify and open version ``name`` of the knowledge base in ``kb_dir``.

    ``dense_index(version_dir, manifest, chunk_count)`` opens its vectors (None when keyword-only).
    """
    version_dir = kb_dir / name
    if not version_dir.is_dir():
        raise storage.damaged(kb_name, f"{version_dir} (named by {storage.POINTER}) is missing")
    manifest = storage.read_manifest(version_dir, kb_name=kb_name)
    docstore = Docstore.open_readonly(version_dir / DOCSTORE_FILE)
    try:
        count = docstore.chunk_count()
        if count != manifest.counts.chunks:
            raise storage.damaged(kb_name, f"its docstore holds {count} chunks, its manifest {manifest.counts.chunks}")
        dense = dense_index(version_dir, manifest, count)
    except BaseException:
        docstore.close()
        raise
    return LoadedVersion(name, version_dir, manifest, docstore, dense)




class LiveVersion:
    """Follows a knowledge base's ``CURRENT``: the loaded version, its vector store, and readers'
    references to it. Swapping versions retires the old one (closed when its readers finish)."""

    def __init__(self, kb_dir: Path, kb_name: str, *, make_store: Callable[[dict[str, Any]], DenseStore]) -> None:
        self.kb_dir = kb_dir
        self.kb_name = kb_name
        self._make_store = make_store
        self._lock = threading.RLock()
        self.version: LoadedVersion | None = None
        self.store: DenseStore | None = None

    def refresh(self) -> tuple[bool, Manifest | None]:
        """Load the newest committed version; ``(changed, manifest of the version that was
        dropped)`` — a dropped knowledge base is forgotten, never served stale (glmkb #20)."""
        with self._lock:
            current = storage.read_pointer(self.kb_dir)
            if current is None:
                if self.version is None:
                    return False, None
                dropped = self.version.manifest
                self.close()
                self.store = None
                return True, dropped
            if self.version is not None and self.version.name == current:
                return False, None
            if storage.open_current(self.kb_dir, self.switch_to) is None:  # dropped while it was being opened
                return self.refresh()
            return True, None

    def switch_to(self, name: str) -> LoadedVersion:
        """Open version ``name`` and make it the loaded one."""
        with self._lock:
            version = open_version(self.kb_dir, name, kb_name=self.kb_name, dense_index=self._open_dense)
            old, self.version = self.version, version
        if old is not None:
            old.retire()
        return version

    def vector_store(self, manifest: dict[str, Any], *, fresh: bool = False) -> DenseStore:
        """The store holding the vectors (made once; ``fresh``: for a keyword-only KB gaining vectors)."""
        with self._lock:
            if self.store is None or fresh:
                self.store = self._make_store(manifest)
            return self.store

    def _open_dense(self, version_dir: Path, manifest: Manifest, count: int) -> DenseIndex | None:
        if manifest.keyword_only:
            return None
        store = self.vector_store(manifest.as_dict())
        if store.kind != manifest.store:
            raise KnowledgeBaseError(f"knowledge base {self.kb_name!r} changed vector store while open; open it again")
        return store.open_index(version_dir, manifest.as_dict(), chunk_count=count)

    @contextlib.contextmanager
    def reading(self, *, missing: Callable[[], Exception] | None) -> Iterator[LoadedVersion | None]:
        """The loaded version held open while the caller reads; ``missing()`` is raised when
        there is none (None: yield None instead)."""
        with self._lock:
            version = self.version
            if version is None and missing is not None:
                raise missing()
            if version is not None:
                version.acquire()
        try:
            yield version
        finally:
            if version is not None:
                version.release()

    def close(self) -> None:
        with self._lock:
            if self.version is not None:
                self.version.retire()
                self.version = None
            if self.store is not None:
                self.store.close()


__all__ = ["BM25_DIR", "DOCSTORE_FILE", "LiveVersion", "LoadedVersion", "open_version"]
