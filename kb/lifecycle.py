"""Knowledge bases as folders: list them (from their manifests alone), make their vector store,
and drop them, damaged or not.

Listing reads ``CURRENT`` and the checked manifest only (no docstore, BM25 or vectors loaded,
no file hashes verified): glmkb #20 measured 15 s and 2.7 GiB for ``ingest list`` beside a 1 GB
knowledge base when it loaded each one for its counts. Dropping never opens a version, so a
damaged knowledge base can always be dropped.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb import storage
from kb.dense_store import DenseStore
from kb.errors import KnowledgeBaseError, KnowledgeBaseNotFound
from kb.faiss_store import FaissStore
from kb.manifest import Manifest
from kb.names import confusable_name


@dataclass(frozen=True)
class KBSummary:
    """One knowledge base as ``ingest list`` and the UI show it; ``error`` is set when it is damaged."""

    name: str
    documents: int | None = None
    chunks: int | None = None
    embedding: str | None = None
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    updated_at: str | None = None
    error: str | None = None

    @property
    def damaged(self) -> bool:
        return self.error is not None


def list_names(root: str | Path) -> list[str]:
    """Names of the knowledge bases under ``root`` (damaged ones included; never ``.trash-*``)."""
    root = Path(root).expanduser()
    storage.clean_trash(root)
    return [p.name for p in storage.kb_folders(root)]


def summarize(root: str | Path, name: str) -> KBSummary:
    """A knowledge base's counts and settings from its manifest (checksum and schema checked)."""
    kb_dir = Path(root).expanduser() / name
    try:
        manifest = current_manifest(kb_dir)
    except KnowledgeBaseError as e:
        return KBSummary(name=name, error=str(e))
    return KBSummary(
        name=name,
        documents=manifest.counts.documents,
        chunks=manifest.counts.chunks,
        embedding=manifest.embedding.model,
        chunk_size=manifest.chunking.chunk_size,
        chunk_overlap=manifest.chunking.chunk_overlap,
        updated_at=manifest.updated_at,
    )


def list_summaries(root: str | Path) -> list[KBSummary]:
    """Every knowledge base under ``root``; a damaged one is marked and never hides the others."""
    return [summarize(root, name) for name in list_names(root)]


def current_manifest(kb_dir: Path) -> Manifest:
    """The live version's manifest, checked but without verifying the version's files."""

    def read(version: str) -> Manifest:
        if not (kb_dir / version).is_dir():
            raise storage.damaged(kb_dir.name, f"{kb_dir / version} (named by {storage.POINTER}) is missing")
        return storage.read_manifest(kb_dir / version, kb_name=kb_dir.name, verify=False)

    manifest = storage.open_current(kb_dir, read)
    if manifest is None:
        raise storage.pointer_lost(kb_dir) or KnowledgeBaseNotFound(no_such_kb(kb_dir.parent, kb_dir.name))
    return manifest


def make_store(
    manifest: dict[str, Any], *, kb_dir: Path, kb_name: str, milvus_uri: str | None, token_env: str
) -> DenseStore:
    """The store holding a knowledge base's vectors, as its manifest (``vectors.store``) says."""
    kind = str((manifest.get("vectors") or {}).get("store", "faiss"))
    if kind == "faiss":
        return FaissStore(kb_name)
    if kind == "milvus":
        from kb.milvus_store import MilvusStore, resolve_uri

        vectors = manifest.get("vectors") or {}
        uri, recorded = resolve_uri(milvus_uri or vectors.get("uri"), kb_dir.parent)
        return MilvusStore(
            kb_dir=kb_dir,
            kb_name=kb_name,
            uri=uri,
            recorded_uri=recorded,
            token_env=token_env,
            collection=vectors.get("collection"),
            built_uri=vectors.get("uri"),
        )
    raise KnowledgeBaseError(
        f"knowledge base {kb_name!r} keeps its vectors in an unknown store {kind!r}; "
        "upgrade glmkb or rebuild the knowledge base"
    )


def store_for_drop(kb_dir: Path, *, milvus_uri: str | None, token_env: str) -> DenseStore:
    """The store to empty on drop, found without trusting the version: the manifest if it still
    parses, else the Milvus collection name a first build recorded beside the versions."""
    from kb.milvus_store import COLLECTION_FILE

    vectors: dict[str, Any] = {}
    with contextlib.suppress(KnowledgeBaseError):
        vectors = dict(current_manifest(kb_dir).vectors or {})
    if vectors.get("store") == "milvus" or (kb_dir / COLLECTION_FILE).exists():
        vectors = {**vectors, "store": "milvus"}
        return make_store({"vectors": vectors}, kb_dir=kb_dir, kb_name=kb_dir.name, milvus_uri=milvus_uri, token_env=token_env)
    return FaissStore(kb_dir.name)


def drop(root: str | Path, name: str, *, milvus_uri: str | None = None, token_env: str = "MILVUS_TOKEN") -> None:
    """Delete knowledge base ``name``, damaged or not: its vectors outside the folder (a Milvus
    collection) first, then the folder (renamed away atomically, then deleted). If Milvus cannot be
    reached, nothing is deleted. Any folder by that name goes, even one holding no version."""
    kb_dir = Path(root).expanduser() / name
    if not kb_dir.is_dir():
        storage.read_pointer(kb_dir)  # a file by that name: says so
        raise KnowledgeBaseNotFound(no_such_kb(kb_dir.parent, name))
    with storage.write_lock(kb_dir):
        if not kb_dir.is_dir():  # dropped by the writer we waited for
            raise KnowledgeBaseNotFound(no_such_kb(kb_dir.parent, name))
        store = store_for_drop(kb_dir, milvus_uri=milvus_uri, token_env=token_env)
        try:
            store.drop()
        finally:
            store.close()
        trash = storage.move_to_trash(kb_dir)
    shutil.rmtree(trash, ignore_errors=True)
    storage.clean_trash(kb_dir.parent)


def check_new_name(root: str | Path, name: str) -> None:
    """Refuse to create knowledge base ``name`` when it would look like an existing one: the same
    NFKC-casefolded skeleton (``Ｓａｎｇｕｏ`` or ``SANGUO`` beside ``sanguo``; glmkb #20.16: two
    names that displayed identically were two knowledge bases)."""
    other = confusable_name(name, list_names(Path(root).expanduser()))
    if other is not None:
        raise KnowledgeBaseError(confusable_message(name, other))


def confusable_message(name: str, other: str) -> str:
    return (f"knowledge base name {name!r} looks the same as the existing knowledge base {other!r} "
            f"(they differ only in letter case, full-width or compatibility forms); use {other!r} or another name")


def no_such_kb(root: Path, name: str) -> str:
    names = list_names(root)
    have = f"existing: {', '.join(names)}" if names else "there are none yet"
    return f"no knowledge base named {name!r} in {root} ({have}); create it with `ingest build FILE... --kb {name}`"


__all__ = ["KBSummary", "check_new_name", "confusable_message", "current_manifest", "drop", "list_names", "list_summaries", "make_store", "no_such_kb", "summarize"]
