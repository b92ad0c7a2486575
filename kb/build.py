"""Writing a new version of a knowledge base: each step of a build is a method of :class:`VersionWriter`.

A build copies the current docstore into a staging folder, deletes replaced and removed
documents, streams new documents in (text blocks, chunks, BM25 tokens and vectors a batch at a
time), builds the BM25 index from the docstore in two passes, writes the vectors through the
knowledge base's :class:`~kb.dense_store.DenseStore` and publishes the folder (``kb/storage.py``).
The caller holds the writer lock. What it writes comes from :mod:`kb.incoming` (files read, the plan).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from configs.errors import one_line
from kb import storage
from kb.bm25_index import BM25Index
from kb.build_report import BuildReport
from kb.dense_store import DenseStore, VectorChange
from kb.docstore import Docstore, DocumentInfo
from kb.embedding import is_keyword_only
from kb.errors import EmbeddingModelError, KnowledgeBaseError
from kb.incoming import Incoming
from kb.splitting import Chunk, iter_chunks
from kb.script import SCRIPT
from kb.tokenizing import WIDTH, WORDS, tokenize, tokens_folded
from kb.version import BM25_DIR, DOCSTORE_FILE, LoadedVersion

CHUNK_BATCH = 1024
"""Chunks tokenized, embedded and written at a time while a document streams in."""
# "script": tokens cut from text folded to simplified characters (kb.script); absent before. "width":
# full-width forms folded (NFKC, kb.tokenizing); absent before session 35. "tokenizer": jieba's words cut
# by rjieba since session 37 (kb.tokenizing.WORDS), "jieba.cut_for_search" before.
BM25_SETTINGS = {"tokenizer": WORDS, "script": SCRIPT, "width": WIDTH, "k1": 1.5, "b": 0.75,
                 "method": "lucene"}
Embed = Callable[[Sequence[str]], np.ndarray]


def embedder(embeddings: Any, *, batch_size: int, dimension: int | None, kb_name: str) -> Embed:
    """Texts -> normalized float32 vectors through a LangChain ``Embeddings``, ``batch_size`` at a time."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            dim = dimension or len(embeddings.embed_query("维度"))
            return np.zeros((0, dim), dtype=np.float32)
        parts = [
            np.asarray(embeddings.embed_documents(list(texts[i : i + batch_size])), dtype=np.float32)
            for i in range(0, len(texts), batch_size)
        ]
        vectors = np.ascontiguousarray(np.concatenate(parts))
        if dimension is not None and vectors.shape[1] != dimension:
            raise EmbeddingModelError(
                f"embedding model gives {vectors.shape[1]}-dimensional vectors but knowledge base "
                f"{kb_name!r} holds {dimension}-dimensional ones; use the model it was built with"
            )
        return vectors

    return embed


class VersionWriter:
    """Writes one new version of knowledge base ``kb_name`` in ``kb_dir`` (writer lock held).

    ``manifest`` is the current version's manifest as a dict (or a new knowledge base's
    settings); ``embed`` is None for keyword-only knowledge bases, else ``store`` takes the vectors.
    """

    def __init__(
        self,
        *,
        kb_dir: Path,
        kb_name: str,
        manifest: dict[str, Any],
        base: LoadedVersion | None,
        store: DenseStore | None,
        embed: Embed | None,
        show_progress: bool = False,
    ) -> None:
        self.kb_dir = kb_dir
        self.kb_name = kb_name
        self.manifest = manifest
        self.base = base
        self.store = store
        self.embed = embed
        self.show_progress = show_progress
        self.now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._documents: list[DocumentInfo] = []  # the new version's, read before its docstore closes
        self._pointer_before: str | None = None  # what CURRENT named when the staging folder was made

    @classmethod
    def prepare(
        cls, *, kb_dir: Path, kb_name: str, manifest: dict[str, Any], base: LoadedVersion | None,
        store: Callable[[], DenseStore], embeddings: Callable[[], Any], batch_size: int, show_progress: bool,
    ) -> VersionWriter:
        """A writer for ``manifest``'s knowledge base; for one with vectors, the store is checked and the
        embedding model loaded first, so a missing server or model fails before the slow steps."""
        if is_keyword_only(manifest["embedding"]["model"]):
            return cls(kb_dir=kb_dir, kb_name=kb_name, manifest=manifest, base=base, store=None, embed=None,
                       show_progress=show_progress)
        vector_store = store()
        vector_store.check_writable()
        embed = embedder(embeddings(), batch_size=batch_size, dimension=manifest["embedding"]["dimension"], kb_name=kb_name)
        return cls(kb_dir=kb_dir, kb_name=kb_name, manifest=manifest, base=base, store=vector_store, embed=embed,
                   show_progress=show_progress)

    @property
    def chunking(self) -> dict[str, Any]:
        return self.manifest["chunking"]

    # --- the two kinds of build ------------------------------------------------------------

    def write(self, to_add: Sequence[Incoming], to_delete: Sequence[str], report: BuildReport) -> str:
        """Add ``to_add`` and delete the documents ``to_delete`` (doc ids); returns the new version."""
        with self._staging() as staging:
            docstore = self._copy_docstore(staging, self.base.docstore.path if self.base else None)
            removed_ids = self._delete(docstore, to_delete)
            report.chunks_removed = len(removed_ids)
            next_id = max(int(self.manifest.get("next_chunk_id", 0)), docstore.max_chunk_id() + 1)
            new_ids, vectors = self._add(docstore, to_add, first_id=next_id)
            report.chunks_added = len(new_ids)
            next_id += len(new_ids)
            all_ids = self._build_bm25(docstore, staging)
            self._write_vectors(
                staging,
                base=self.base.dense if self.base else None,
                removed_ids=removed_ids,
                new_ids=new_ids,
                vectors=vectors,
                next_id=next_id,
                all_ids=all_ids,
            )
            return self._publish(staging, next_id=next_id, chunks=len(all_ids))

    def reindex(self, source_docstore: Path, report: BuildReport) -> str:
        """A new version with the same documents and chunks as ``source_docstore``: BM25 rebuilt
        and every chunk embedded afresh (a keyword-only knowledge base gaining vectors, or a
        repair from the stored text)."""
        with self._staging() as staging:
            docstore = self._copy_docstore(staging, source_docstore)
            next_id = max(int(self.manifest.get("next_chunk_id", 0)), docstore.max_chunk_id() + 1)
            ids, vectors = self._embed_stored(docstore)
            report.chunks_embedded = len(ids) if self.embed is not None else 0
            all_ids = self._build_bm25(docstore, staging)
            self._write_vectors(
                staging, base=None, removed_ids=[], new_ids=ids, vectors=vectors, next_id=next_id, all_ids=all_ids
            )
            return self._publish(staging, next_id=next_id, chunks=len(all_ids))

    # --- steps ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh staging folder, removed (with a one-line error) if the build fails."""
        first = not storage.is_knowledge_base(self.kb_dir)
        self._pointer_before = self._pointer()
        self.kb_dir.mkdir(parents=True, exist_ok=True)
        staging = storage.new_staging_dir(self.kb_dir)
        try:
            yield staging
        except BaseException as e:
            # A full disk, a read-only folder...: said before the staging folder frees its space.
            failure = self._failed(e) if isinstance(e, (OSError, sqlite3.Error)) else None
            shutil.rmtree(staging, ignore_errors=True)
            if first:  # a failed first build leaves no folder behind (nothing lists an empty one)
                with contextlib.suppress(OSError):
                    self.kb_dir.rmdir()
            if failure is not None:
                raise failure from e
            raise

    def _copy_docstore(self, staging: Path, source: Path | None) -> Docstore:
        """The staging docstore: ``source``'s copy (its chunks' BM25 tokens cut again where they date from before
        script or width folding or rjieba, ``kb.tokenizing``), or a new one."""
        path = staging / DOCSTORE_FILE
        if source is not None:
            shutil.copyfile(source, path)
        docstore = Docstore.open_writable(path)
        if source is not None and not tokens_folded(self.manifest.get("bm25")):
            self._retokenize(docstore)
        return docstore

    def _retokenize(self, docstore: Docstore) -> None:
        """Cut every stored chunk's BM25 tokens again (once, for a version from before script or width folding
        or rjieba)."""
        quiet = not self.show_progress
        with tqdm(total=docstore.chunk_count(), desc="re-tokenizing", unit="chunk", disable=quiet, leave=False) as bar:
            for batch in docstore.chunk_texts(CHUNK_BATCH):
                docstore.set_chunk_tokens({chunk_id: tokenize(text) for chunk_id, text in batch})
                bar.update(len(batch))

    def _delete(self, docstore: Docstore, doc_ids: Sequence[str]) -> list[int]:
        removed: list[int] = []
        for doc_id in doc_ids:
            removed.extend(docstore.delete_document(doc_id))
        return removed

    def _add(self, docstore: Docstore, docs: Sequence[Incoming], *, first_id: int) -> tuple[list[int], np.ndarray | None]:
        """Stream each document in; returns the new chunk ids and their vectors (None if keyword-only)."""
        new_ids: list[int] = []
        parts: list[np.ndarray] = []
        with tqdm(
            total=sum(doc.chars for doc in docs),
            desc="tokenizing" if self.embed is None else "tokenizing+embedding",
            unit="char",
            unit_scale=True,
            disable=not self.show_progress,
            leave=False,
        ) as bar:
            for doc in docs:
                first = first_id + len(new_ids)
                count = self._write_document(docstore, doc, first_id=first, vectors=parts, bar=bar)
                docstore.add_document(
                    doc_id=doc.doc_id,
                    source=doc.source,
                    sha256=doc.sha256,
                    encoding=doc.encoding,
                    chars=doc.chars,
                    added_at=self.now,
                    chapters=doc.chapters,
                )
                new_ids.extend(range(first, first + count))
        return new_ids, self._joined(parts)

    def _write_document(
        self, docstore: Docstore, doc: Incoming, *, first_id: int, vectors: list[np.ndarray], bar: tqdm
    ) -> int:
        """Stream one document into the staging docstore: its text blocks, then its chunks with
        their BM25 tokens (and vectors, appended to ``vectors``) a batch at a time. Returns the
        number of chunks. Refuses a document whose text changed since it was scanned."""
        hasher = hashlib.sha256()
        chars = 0

        def recorded() -> Iterator[str]:
            nonlocal chars
            for ordinal, block in enumerate(doc.blocks()):
                hasher.update(block.encode("utf-8"))
                chars += len(block)
                docstore.add_text_block(doc.doc_id, ordinal, block)
                yield block

        place = doc.locator()
        chunks = (
            dataclasses.replace(c, **dataclasses.asdict(place(c.start, c.end)))
            for c in iter_chunks(
                recorded(), doc.sections(), chunk_size=self.chunking["chunk_size"], chunk_overlap=self.chunking["chunk_overlap"]
            )
        )
        count = done = 0
        for batch in _batches(chunks, CHUNK_BATCH):
            # Space-joined: one string per chunk, not one Python object per token.
            tokens = [" ".join(tokenize(c.text)) for c in batch]
            if self.embed is not None:
                vectors.append(self.embed([c.text for c in batch]))
            ids = range(first_id + count, first_id + count + len(batch))
            docstore.add_chunks(doc.doc_id, first_ordinal=count, chunk_ids=ids, chunks=batch, chunk_tokens=tokens)
            count += len(batch)
            bar.update(batch[-1].end - done)
            done = batch[-1].end
        bar.update(doc.chars - done)
        if hasher.hexdigest() != doc.sha256 or chars != doc.chars:
            raise KnowledgeBaseError(f"{doc.source} changed while it was being added; add it again")
        return count

    def _embed_stored(self, docstore: Docstore) -> tuple[list[int], np.ndarray | None]:
        """Every stored chunk's id, and its vector when the knowledge base has an embedding model."""
        ids: list[int] = []
        parts: list[np.ndarray] = []
        total = docstore.chunk_count()
        quiet = not self.show_progress or self.embed is None
        with tqdm(total=total, desc="embedding", unit="chunk", disable=quiet, leave=False) as bar:
            for batch in docstore.chunk_texts(CHUNK_BATCH):
                ids.extend(i for i, _ in batch)
                if self.embed is not None:
                    parts.append(self.embed([text for _, text in batch]))
                bar.update(len(batch))
        return ids, self._joined(parts)

    def _joined(self, parts: list[np.ndarray]) -> np.ndarray | None:
        if self.embed is None:
            return None
        return np.concatenate(parts) if parts else self.embed([])

    def _build_bm25(self, docstore: Docstore, staging: Path) -> np.ndarray:
        """Commit the docstore and build its BM25 index into the staging folder; returns every chunk id."""
        all_ids = np.asarray(docstore.chunk_ids(), dtype=np.int64)
        self._documents = docstore.documents()
        if self.base is not None:
            self.base.release_bm25()  # glmkb #20: never hold the base's and the new BM25 at once
        bm25 = BM25Index.build(docstore.chunk_tokens, all_ids, show_progress=self.show_progress)
        docstore.commit_and_close()
        bm25.save(staging / BM25_DIR)
        return all_ids

    def _write_vectors(
        self,
        staging: Path,
        *,
        base: Any,
        removed_ids: Sequence[int],
        new_ids: Sequence[int],
        vectors: np.ndarray | None,
        next_id: int,
        all_ids: np.ndarray,
    ) -> None:
        if self.embed is None or self.store is None:
            return
        assert vectors is not None
        dimension = int(vectors.shape[1])
        self.manifest["embedding"] = {**self.manifest["embedding"], "dimension": dimension}
        self.manifest["vectors"] = self.store.write_version(
            VectorChange(
                base=base,
                staging=staging,
                removed_ids=removed_ids,
                new_ids=new_ids,
                vectors=vectors,
                dimension=dimension,
                next_chunk_id=next_id,
                live_ids=all_ids,
                show_progress=self.show_progress,
            )
        )

    def _publish(self, staging: Path, *, next_id: int, chunks: int) -> str:
        documents = {
            d.doc_id: {"source": d.source, "sha256": d.sha256, "chars": d.chars, "chunks": d.chunks}
            for d in self._documents
        }
        manifest = {
            **self.manifest,
            "next_chunk_id": next_id,
            "name": self.kb_name,
            "updated_at": self.now,
            "documents": documents,
            "counts": {"documents": len(documents), "chunks": chunks},
            "bm25": BM25_SETTINGS,
        }
        manifest["created_at"] = manifest.get("created_at") or self.now
        version = storage.publish(self.kb_dir, staging, manifest)
        storage.collect_garbage(self.kb_dir, keep={version} | ({self.base.name} if self.base else set()))
        return version

    def _failed(self, error: BaseException) -> KnowledgeBaseError:
        """One line for a build that could not write its new version (the old one is untouched)."""
        cause = one_line(error)
        with contextlib.suppress(OSError):  # short writes (numpy, faiss) do not always say why
            free = shutil.disk_usage(self.kb_dir.parent).free
            if free < 1 << 20:
                cause = f"{cause}; only {free // 1024} KiB free on that disk"
        if self._published():
            return KnowledgeBaseError(
                f"knowledge base {self.kb_name!r} in {self.kb_dir} now holds this build, but finishing it failed "
                f"({cause}); check that disk, then `ingest doctor --kb {self.kb_name}`"
            )
        return KnowledgeBaseError(
            f"could not write a new version of knowledge base {self.kb_name!r} in {self.kb_dir} ({cause}); "
            "the knowledge base is unchanged: free disk space there (or fix the folder's permissions) and build again"
        )

    def _published(self) -> bool:
        """Whether ``CURRENT`` names a version other than the base: the failure came after the swap
        (sweep 34: a failed fsync of the folder after it was reported "the knowledge base is unchanged")."""
        current = self._pointer()
        return current is not None and current != self._pointer_before

    def _pointer(self) -> str | None:
        """The version ``CURRENT`` names, or None (none, or unreadable)."""
        try:
            return storage.read_pointer(self.kb_dir)
        except (OSError, KnowledgeBaseError):
            return None


def _batches(items: Iterable[Chunk], size: int) -> Iterator[list[Chunk]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


__all__ = ["BM25_SETTINGS", "CHUNK_BATCH", "VersionWriter", "embedder"]
