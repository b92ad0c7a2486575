"""A named knowledge base under ``kb_root``: build incrementally, search three ways, read back.

Dense vectors live in a :class:`kb.dense_store.DenseStore` (a FAISS inner-product index
in each version folder, or a Milvus collection; normalized embeddings, so scores are cosine
similarities), keywords in a persisted BM25 index over jieba tokens, and chunk text,
metadata and full document text in an SQLite docstore. Nothing is pickled. See
``kb/storage.py`` for the crash-safe version layout and ``kb/milvus_store.py`` for how
Milvus rows follow it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from langchain_core.documents import Document
from tqdm.auto import tqdm

from kb import storage
from kb.bm25_index import BM25Index
from kb.dense_store import (
    DEFAULT_STORE,
    STORES,
    DenseIndex,
    DenseStore,
    VectorChange,
    store_kind,
)
from kb.docstore import Docstore, DocumentInfo, StoredChunk
from kb.embedding import (
    KEYWORD_ONLY,
    is_keyword_only,
    load_cross_encoder,
    load_embeddings,
    model_identity,
    same_model,
)
from kb.errors import EmbeddingModelError, KnowledgeBaseError
from kb.faiss_store import FaissStore
from kb.fusion import reciprocal_rank_fusion
from kb.loaders import LoadedDocument, Place, open_document
from kb.loaders.document import SectionIndex
from kb.names import validate_kb_name
from kb.splitting import Chapter, ChapterScanner, Chunk, iter_chunks
from kb.tokenizing import tokenize

if TYPE_CHECKING:
    from configs import Settings
    from kb.knowledge_base_retriever import KnowledgeBaseRetriever

logger = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid")
DOCSTORE_FILE = "docstore.sqlite"
BM25_DIR = "bm25"
SPLITTER_VERSION = "chapters-sentences-v1"
# How many candidates each retriever contributes to fusion / reranking.
CANDIDATE_DEPTH = 50
# Chunks tokenized, embedded and written at a time while a document streams in.
CHUNK_BATCH = 1024


@dataclass
class BuildReport:
    """What an add or remove did to a knowledge base."""

    files: int = 0
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks_added: int = 0
    chunks_skipped: int = 0
    chunks_removed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI."""
        return (
            f"files: {self.files} ({len(self.added)} added, {len(self.replaced)} replaced, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed); "
            f"chunks: {self.chunks_added} added, {self.chunks_skipped} skipped, "
            f"{self.chunks_removed} removed; {self.seconds:.1f} s"
        )


@dataclass
class _Version:
    """One loaded, verified version of the knowledge base."""

    name: str
    manifest: dict[str, Any]
    docstore: Docstore
    dense: DenseIndex | None
    bm25: BM25Index

    @property
    def faiss_index(self) -> Any | None:
        """The raw ``faiss`` index of a FAISS-backed version (None otherwise)."""
        return getattr(self.dense, "index", None)


@dataclass
class _Incoming:
    """A source document checked and scanned, waiting to be added; its text is re-read from
    ``blocks`` when it is written, so a build holds one block of it at a time."""

    source: str
    encoding: str
    sha256: str  # of the decoded text as UTF-8
    chars: int
    chapters: list[Chapter]
    blocks: Callable[[], Iterable[str]]
    document: LoadedDocument | None = None  # a file's pages and headings (None for add_texts)

    @property
    def doc_id(self) -> str:
        return doc_id_for(self.source)

    @classmethod
    def scan(
        cls, source: str, encoding: str, blocks: Callable[[], Iterable[str]], *, document: LoadedDocument | None = None
    ) -> _Incoming:
        """Read the text once for its hash, length and chapters (a document's own headings
        where it has them, else its 第N回/章 lines)."""
        hasher, scanner, chars = hashlib.sha256(), ChapterScanner(), 0
        for block in blocks():
            hasher.update(block.encode("utf-8"))
            scanner.feed(block)
            chars += len(block)
        chapters = document.chapters(length=chars) if document is not None else None
        return cls(source, encoding, hasher.hexdigest(), chars, scanner.finish() if chapters is None else chapters, blocks, document)

    def sections(self) -> list[Chapter]:
        """Where chunks are cut: the chapters, and inside them any lower heading (DOCX/PDF/EPUB/...)."""
        return self.document.sections(self.chapters) if self.document is not None else self.chapters

    def locator(self) -> Callable[[int, int], Place]:
        """``place(start, end)`` of this document's chunks: pages and heading path."""
        if self.document is not None:
            return self.document.locator(self.chapters)
        sections = SectionIndex((), self.chapters)
        return lambda start, end: Place(section=sections.at(start))


def doc_id_for(source: str) -> str:
    """Stable id of a source within a knowledge base (same path -> same id across rebuilds)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def source_for_path(path: str | os.PathLike[str]) -> str:
    """How a file is recorded as ``source``: its absolute path."""
    return str(Path(path).expanduser().resolve())


class KnowledgeBase:
    """A named knowledge base in ``root/name``.

    Open an existing one with ``KnowledgeBase(root, name)`` or :meth:`from_settings`; pass
    ``create=True`` to start a new one (nothing is written until the first documents are
    added). ``embedding_model``/``chunk_size``/``chunk_overlap``/``store`` left as None mean
    "what the knowledge base was built with"; given explicitly they must match it.

    ``store`` is where a new knowledge base keeps its vectors: ``faiss`` (files in each
    version folder, the default) or ``milvus`` (a collection at ``milvus_uri``: a ``.db``
    path, relative to ``root``, for embedded Milvus Lite, or ``http://host:19530``; None =
    the URI the knowledge base was built with, else ``root/milvus.db``). The Milvus token is
    read from the environment variable ``milvus_token_env``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        *,
        create: bool = False,
        embedding_model: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        device: str = "auto",
        batch_size: int = 64,
        mode: Mode = "hybrid",
        top_k: int = 5,
        score_threshold: float | None = None,
        reranker: str | None = None,
        store: str | None = None,
        milvus_uri: str | None = None,
        milvus_token_env: str = "MILVUS_TOKEN",
    ) -> None:
        self.name = validate_kb_name(name)
        self.root = Path(root).expanduser()
        self.path = self.root / name
        self.device = device
        self.batch_size = batch_size
        self.mode = _check_mode(mode)
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.reranker = reranker
        self.milvus_uri = milvus_uri
        self.milvus_token_env = milvus_token_env
        if store is not None and store not in STORES:
            raise KnowledgeBaseError(f"unknown vector store {store!r}; use one of {', '.join(STORES)}")
        self._dense_store: DenseStore | None = None
        self._lock = threading.RLock()  # guards swapping the loaded version and lazy models
        self._write_mutex = threading.Lock()  # one build at a time per object (flock covers processes)
        self._version: _Version | None = None
        self._embeddings: Any | None = None
        self._cross_encoder: Any | None = None
        self._pending: dict[str, Any] | None = None
        if storage.is_knowledge_base(self.path):
            self._load_version(storage.read_pointer(self.path))
            self._check_requested(embedding_model, chunk_size, chunk_overlap, store)
        elif not create:
            raise KnowledgeBaseError(_no_such_kb(self.root, name))
        else:
            from configs import ChunkingSettings, EmbeddingSettings

            chunking = ChunkingSettings(
                chunk_size=chunk_size or ChunkingSettings.model_fields["chunk_size"].default,
                chunk_overlap=(
                    chunk_overlap if chunk_overlap is not None else ChunkingSettings.model_fields["chunk_overlap"].default
                ),
            )
            model = embedding_model or EmbeddingSettings.model_fields["model"].default
            self._pending = {
                "embedding": {"model": model_identity(model), "dimension": None},
                "chunking": {
                    "chunk_size": chunking.chunk_size,
                    "chunk_overlap": chunking.chunk_overlap,
                    "splitter": SPLITTER_VERSION,
                },
            }
            if not is_keyword_only(model):
                self._pending["vectors"] = {"store": store or DEFAULT_STORE}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str | None = None,
        create: bool = False,
        embedding_model: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        store: str | None = None,
    ) -> KnowledgeBase:
        """Open ``name`` (default ``settings.kb_name``) under ``settings.kb_root``.

        An existing knowledge base is queried with the embedding model it was built with and
        keeps its vector store (``settings.embedding.model`` and ``settings.kb.store`` only
        seed new ones), on ``settings.embedding.device``. Arguments given explicitly must
        match an existing knowledge base.
        """
        exists = storage.is_knowledge_base(Path(settings.kb_root).expanduser() / (name or settings.kb_name))
        if create and not exists:
            embedding_model = embedding_model or settings.embedding.model
            chunk_size = chunk_size or settings.chunking.chunk_size
            chunk_overlap = chunk_overlap if chunk_overlap is not None else settings.chunking.chunk_overlap
            store = store or settings.kb.store
        return cls(
            settings.kb_root,
            name or settings.kb_name,
            create=create,
            embedding_model=embedding_model,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            device=settings.embedding.device,
            batch_size=settings.embedding.batch_size,
            mode=settings.retrieval.mode,
            top_k=settings.retrieval.top_k,
            score_threshold=settings.retrieval.score_threshold,
            reranker=settings.retrieval.reranker,
            store=store,
            milvus_uri=settings.kb.milvus_uri,
            milvus_token_env=settings.kb.milvus_token_env,
        )

    # --- properties ------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Whether a version has been committed (a created KB exists after its first add)."""
        return self._version is not None

    @property
    def manifest(self) -> dict[str, Any]:
        """The live manifest (a copy), or the settings a new knowledge base will be created with."""
        import copy

        if self._version is None and self._pending is None:
            raise KnowledgeBaseError(_no_such_kb(self.root, self.name))
        return copy.deepcopy(self._version.manifest if self._version else self._pending)

    @property
    def embedding_model(self) -> str:
        """The embedding model of this knowledge base (``none`` for keyword-only)."""
        return self.manifest["embedding"]["model"]

    @property
    def keyword_only(self) -> bool:
        return is_keyword_only(self.embedding_model)

    @property
    def dimension(self) -> int | None:
        return self.manifest["embedding"]["dimension"]

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunking"]["chunk_size"])

    @property
    def chunk_overlap(self) -> int:
        return int(self.manifest["chunking"]["chunk_overlap"])

    @property
    def store(self) -> str | None:
        """Where the vectors live: ``faiss`` or ``milvus`` (None for keyword-only knowledge bases)."""
        if self.keyword_only:
            return None
        return store_kind(self.manifest)

    @property
    def version(self) -> str | None:
        """Name of the loaded version folder (changes after every build)."""
        return self._version.name if self._version else None

    def __repr__(self) -> str:
        return f"KnowledgeBase(name={self.name!r}, root={str(self.root)!r}, version={self.version!r})"

    # --- listing and reading -----------------------------------------------------------------

    @staticmethod
    def list_names(root: str | os.PathLike[str]) -> list[str]:
        """Names of the knowledge bases under ``root``."""
        root = Path(root).expanduser()
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and storage.is_knowledge_base(p))

    def list_documents(self) -> list[DocumentInfo]:
        """Every document in the knowledge base, oldest first."""
        version = self._current()
        return version.docstore.documents() if version else []

    def get_document(self, ref: str) -> DocumentInfo:
        """A document by doc_id, source, file path or (unique) file name."""
        documents = self.list_documents()
        for match in (
            lambda d: d.doc_id == ref or d.source == ref,
            lambda d: d.source == _maybe_resolve(ref),
        ):
            found = [d for d in documents if match(d)]
            if found:
                return found[0]
        by_name = [d for d in documents if Path(d.source).name == ref]
        if len(by_name) == 1:
            return by_name[0]
        hint = "several documents are named like that; give the full path" if by_name else "it is not in it"
        raise KnowledgeBaseError(
            f"no document {ref!r} in knowledge base {self.name!r} ({hint}); "
            f"`ingest list --kb {self.name}` shows its documents"
        )

    def get_document_text(self, ref: str) -> str:
        """The full decoded text of a document (chunk offsets index into it)."""
        info = self.get_document(ref)
        text = self._require_version().docstore.document_text(info.doc_id)
        assert text is not None
        return text

    def get_chapters(self, ref: str) -> list[Chapter]:
        """A document's sections with offsets: the preamble (``number=None``) if any, then its
        chapters in order; ``[]`` for documents without chapter headings."""
        return self._require_version().docstore.chapters(self.get_document(ref).doc_id)

    def get_chunks(self, ref: str) -> list[Document]:
        """A document's chunks in reading order, as Documents (``score`` is 0.0)."""
        chunks = self._require_version().docstore.chunks_of(self.get_document(ref).doc_id)
        return [_to_document(c, 0.0) for c in chunks]

    # --- building -------------------------------------------------------------------------------

    def add_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        sources: Sequence[str] | None = None,
        show_progress: bool = False,
        ocr: str = "auto",
    ) -> BuildReport:
        """Add or update documents (text, Markdown, PDF, DOCX, EPUB, HTML, images: see
        :mod:`kb.loaders`; ``ocr`` off/auto/force for scanned pages). Unchanged files are skipped, changed ones replace their old
        chunks. All files are read and checked before anything is written; files are read in
        blocks, so memory does not grow with their size.

        ``sources`` are the labels to record instead of the files' absolute paths (e.g. the
        names of uploaded files, whose temporary paths mean nothing later).
        """
        started = time.perf_counter()
        paths = list(paths)
        labels = [source_for_path(path) for path in paths] if sources is None else list(sources)
        if len(labels) != len(paths):
            raise ValueError(f"got {len(labels)} sources for {len(paths)} files; give one source per file")
        incoming: list[_Incoming] = []
        for path, label in tqdm(
            list(zip(paths, labels)), desc="reading", unit="file", disable=not show_progress, leave=False
        ):
            document = open_document(path, ocr=ocr)
            incoming.append(_Incoming.scan(label, document.encoding, document.blocks, document=document))
        return self._apply(incoming, [], show_progress=show_progress, started=started)

    def add_texts(self, texts: Mapping[str, str], *, show_progress: bool = False) -> BuildReport:
        """Add or update documents given as ``{source label: text}`` (e.g. web uploads)."""
        started = time.perf_counter()
        incoming = []
        for source, text in texts.items():
            if not text.strip():
                raise KnowledgeBaseError(f"{source} is empty; there is no text to add")
            blocks = [text.removeprefix("\ufeff")]
            incoming.append(_Incoming.scan(source, "text", lambda blocks=blocks: blocks))
        return self._apply(incoming, [], show_progress=show_progress, started=started)

    def remove(self, refs: Iterable[str]) -> BuildReport:
        """Remove documents (by doc_id, source, path or unique file name)."""
        started = time.perf_counter()
        doc_ids = [self.get_document(ref).doc_id for ref in refs]
        return self._apply([], doc_ids, show_progress=False, started=started)

    def drop(self) -> None:
        """Delete the whole knowledge base: its vectors outside the folder (a Milvus collection)
        first, then the folder (atomically renamed away first). If Milvus cannot be reached,
        nothing is deleted."""
        if not self.path.exists():
            raise KnowledgeBaseError(_no_such_kb(self.root, self.name))
        with self._write_mutex, storage.write_lock(self.path):
            with contextlib.suppress(KnowledgeBaseError):  # a damaged version must not block its drop
                self.refresh()
            self._store_for_drop().drop()
            trash = self.root / f".trash-{self.name}-{os.getpid()}-{time.time_ns()}"
            os.replace(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the docstore and vector-store connections (the object is unusable afterwards)."""
        with self._lock:
            if self._version is not None:
                self._version.docstore.close()
                self._version = None
            if self._dense_store is not None:
                self._dense_store.close()

    def _apply(
        self, incoming: list[_Incoming], remove_ids: list[str], *, show_progress: bool, started: float
    ) -> BuildReport:
        report = BuildReport(files=len(incoming) + len(remove_ids))
        _check_unique_sources(incoming)
        # Searches keep running on the current version while a build is written.
        with self._write_mutex, storage.write_lock(self.path):
            self.refresh()
            base = self._version
            known = {d.doc_id: d for d in (base.docstore.documents() if base else [])}
            to_add: list[_Incoming] = []
            for doc in incoming:
                old = known.get(doc.doc_id)
                if old is not None and old.sha256 == doc.sha256:
                    report.unchanged.append(doc.source)
                    report.chunks_skipped += old.chunks
                else:
                    to_add.append(doc)
                    (report.replaced if old is not None else report.added).append(doc.source)
            to_delete = [d for d in remove_ids if d in known] + [d.doc_id for d in to_add if d.doc_id in known]
            report.removed = [known[d].source for d in remove_ids if d in known]
            if to_add or to_delete:
                self._write_version(base, to_add, to_delete, report, show_progress=show_progress)
        report.seconds = time.perf_counter() - started
        return report

    def _write_version(
        self,
        base: _Version | None,
        to_add: list[_Incoming],
        to_delete: list[str],
        report: BuildReport,
        *,
        show_progress: bool,
    ) -> None:
        manifest = self.manifest
        if not self.keyword_only:
            # Fail fast (no Milvus, model missing offline) before the slow steps.
            self._vector_store().check_writable()
            self._get_embeddings()

        self.path.mkdir(parents=True, exist_ok=True)
        staging = storage.new_staging_dir(self.path)
        try:
            docstore_path = staging / DOCSTORE_FILE
            if base is not None:
                shutil.copyfile(base.docstore.path, docstore_path)
            store = Docstore.open_writable(docstore_path)
            removed_ids: list[int] = []
            for doc_id in to_delete:
                removed_ids.extend(store.delete_document(doc_id))
            report.chunks_removed = len(removed_ids)
            next_id = max(int(manifest.get("next_chunk_id", 0)), store.max_chunk_id() + 1)
            new_ids: list[int] = []
            vector_parts: list[np.ndarray] = []
            added: list[DocumentInfo] = []
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with tqdm(
                total=sum(doc.chars for doc in to_add),
                desc="tokenizing" if self.keyword_only else "tokenizing+embedding",
                unit="char",
                unit_scale=True,
                disable=not show_progress,
                leave=False,
            ) as bar:
                for doc in to_add:
                    count = self._write_document(store, doc, first_id=next_id, vectors=vector_parts, bar=bar)
                    store.add_document(
                        doc_id=doc.doc_id,
                        source=doc.source,
                        sha256=doc.sha256,
                        encoding=doc.encoding,
                        chars=doc.chars,
                        added_at=now,
                        chapters=doc.chapters,
                    )
                    added.append(
                        DocumentInfo(
                            doc.doc_id, doc.source, doc.sha256, doc.encoding, doc.chars, count,
                            sum(c.number is not None for c in doc.chapters), now,
                        )
                    )
                    new_ids.extend(range(next_id, next_id + count))
                    next_id += count
            vectors = None
            if not self.keyword_only:
                vectors = np.concatenate(vector_parts) if vector_parts else self._embed_chunks([], show_progress=False)
                del vector_parts
                assert vectors is not None
                manifest["embedding"]["dimension"] = int(vectors.shape[1])
            report.chunks_added = len(new_ids)
            all_ids = np.asarray(store.chunk_ids(), dtype=np.int64)
            bm25 = BM25Index.build(store.chunk_tokens, all_ids, show_progress=show_progress)
            store.commit_and_close()
            bm25.save(staging / BM25_DIR)
            del bm25  # the published version loads its own copy: never hold both
            if not self.keyword_only:
                assert vectors is not None
                manifest["vectors"] = self._vector_store().write_version(
                    VectorChange(
                        base=base.dense if base else None,
                        staging=staging,
                        removed_ids=removed_ids,
                        new_ids=new_ids,
                        vectors=vectors,
                        dimension=int(manifest["embedding"]["dimension"]),
                        next_chunk_id=next_id,
                        live_ids=all_ids,
                        show_progress=show_progress,
                    )
                )
            vectors = None  # written; the published version loads its own index
            manifest.update(
                next_chunk_id=next_id,
                name=self.name,
                updated_at=now,
                documents={
                    d.doc_id: {"source": d.source, "sha256": d.sha256, "chars": d.chars, "chunks": d.chunks}
                    for d in _documents_after(base, to_delete, added)
                },
                counts={"documents": None, "chunks": len(all_ids)},
                bm25={"tokenizer": "jieba.cut_for_search", "k1": 1.5, "b": 0.75, "method": "lucene"},
            )
            manifest["counts"]["documents"] = len(manifest["documents"])
            manifest.setdefault("created_at", now)
            version = storage.publish(self.path, staging, manifest)
        except BaseException as e:
            # A full disk, a read-only folder...: said before the staging folder frees its space.
            failure = self._write_failed(e) if isinstance(e, (OSError, sqlite3.Error)) else None
            shutil.rmtree(staging, ignore_errors=True)
            if failure is not None:
                raise failure from e
            raise
        storage.collect_garbage(self.path, keep={version} | ({base.name} if base else set()))
        self._load_version(version)

    def _write_document(
        self, store: Docstore, doc: _Incoming, *, first_id: int, vectors: list[np.ndarray], bar: tqdm
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
                store.add_text_block(doc.doc_id, ordinal, block)
                yield block

        place = doc.locator()
        chunks = (
            dataclasses.replace(c, **dataclasses.asdict(place(c.start, c.end)))
            for c in iter_chunks(recorded(), doc.sections(), chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap)
        )
        count = done = 0
        for batch in _batches(chunks, CHUNK_BATCH):
            # Space-joined: one string per chunk, not one Python object per token.
            tokens = [" ".join(tokenize(c.text)) for c in batch]
            if not self.keyword_only:
                embedded = self._embed_chunks([c.text for c in batch], show_progress=False)
                assert embedded is not None
                vectors.append(embedded)
            ids = range(first_id + count, first_id + count + len(batch))
            store.add_chunks(doc.doc_id, first_ordinal=count, chunk_ids=ids, chunks=batch, chunk_tokens=tokens)
            count += len(batch)
            bar.update(batch[-1].end - done)
            done = batch[-1].end
        bar.update(doc.chars - done)
        if hasher.hexdigest() != doc.sha256 or chars != doc.chars:
            raise KnowledgeBaseError(f"{doc.source} changed while it was being added; add it again")
        return count

    def _write_failed(self, error: BaseException) -> KnowledgeBaseError:
        """One line for a build that could not write its new version (the old one is untouched)."""
        cause = " ".join(str(error).split()) or type(error).__name__
        filename = getattr(error, "filename", None)
        if filename and str(filename) not in cause:
            cause = f"{cause}: {filename}"
        with contextlib.suppress(OSError):  # short writes (numpy, faiss) do not always say why
            free = shutil.disk_usage(self.path).free
            if free < 1 << 20:
                cause = f"{cause}; only {free // 1024} KiB free on that disk"
        return KnowledgeBaseError(
            f"could not write a new version of knowledge base {self.name!r} in {self.path} ({cause}); "
            "the knowledge base is unchanged: free disk space there (or fix the folder's permissions) and build again"
        )

    def _embed_chunks(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray | None:
        if self.keyword_only:
            return None
        embeddings = self._get_embeddings()
        if not texts:
            dim = self.dimension or len(embeddings.embed_query("维度"))
            return np.zeros((0, dim), dtype=np.float32)
        parts = []
        with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=not show_progress, leave=False) as bar:
            for i in range(0, len(texts), self.batch_size):
                batch = list(texts[i : i + self.batch_size])
                parts.append(np.asarray(embeddings.embed_documents(batch), dtype=np.float32))
                bar.update(len(batch))
        vectors = np.ascontiguousarray(np.concatenate(parts))
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise EmbeddingModelError(
                f"embedding model gives {vectors.shape[1]}-dimensional vectors but knowledge base "
                f"{self.name!r} holds {self.dimension}-dimensional ones; use the model it was built with"
            )
        return vectors

    def _vector_store(self) -> DenseStore:
        """The store holding this knowledge base's vectors (made once per object)."""
        with self._lock:
            if self._dense_store is None:
                self._dense_store = self._make_store(self.manifest)
            return self._dense_store

    def _make_store(self, manifest: dict[str, Any]) -> DenseStore:
        kind = store_kind(manifest)
        if kind == "faiss":
            return FaissStore(self.name)
        if kind == "milvus":
            from kb.milvus_store import MilvusStore, resolve_uri

            vectors = manifest.get("vectors", {})
            uri, recorded = resolve_uri(self.milvus_uri or vectors.get("uri"), self.root)
            return MilvusStore(
                kb_dir=self.path,
                kb_name=self.name,
                uri=uri,
                recorded_uri=recorded,
                token_env=self.milvus_token_env,
                collection=vectors.get("collection"),
                built_uri=vectors.get("uri"),
            )
        raise KnowledgeBaseError(
            f"knowledge base {self.name!r} keeps its vectors in an unknown store {kind!r}; "
            "upgrade glmkb or rebuild the knowledge base"
        )

    def _store_for_drop(self) -> DenseStore:
        """The store to empty on drop; a Milvus collection is also found through the name its
        first build recorded, when no version (or a keyword-only one) says it."""
        from kb.milvus_store import COLLECTION_FILE

        if self._version is not None and not self.keyword_only:
            return self._vector_store()
        if (self.path / COLLECTION_FILE).exists():
            vectors = self._version.manifest.get("vectors", {}) if self._version else {}
            return self._make_store({"vectors": {**vectors, "store": "milvus"}})
        return FaissStore(self.name)

    # --- loading --------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load the newest committed version if another process built one; True if it changed."""
        with self._lock:
            if not storage.is_knowledge_base(self.path):
                return False
            current = storage.read_pointer(self.path)
            if self._version is not None and self._version.name == current:
                return False
            self._load_version(current)
            return True

    def _load_version(self, name: str | None) -> None:
        if name is None:
            raise KnowledgeBaseError(_no_such_kb(self.root, self.name))
        version_dir = self.path / name
        manifest = storage.read_manifest(version_dir)
        docstore = Docstore.open_readonly(version_dir / DOCSTORE_FILE)
        try:
            ids = np.asarray(docstore.chunk_ids(), dtype=np.int64)
            bm25 = BM25Index.load(version_dir / BM25_DIR, ids)
            dense = None
            if not is_keyword_only(manifest["embedding"]["model"]):
                with self._lock:
                    if self._dense_store is None:
                        self._dense_store = self._make_store(manifest)
                    elif self._dense_store.kind != store_kind(manifest):
                        raise KnowledgeBaseError(
                            f"knowledge base {self.name!r} changed vector store while open; open it again"
                        )
                dense = self._dense_store.open_index(version_dir, manifest, chunk_count=len(ids))
        except BaseException:
            docstore.close()
            raise
        # The previous version's docstore is left to garbage collection, not closed here:
        # a search in another thread may still be reading it.
        with self._lock:
            self._version = _Version(name, manifest, docstore, dense, bm25)

    def _current(self) -> _Version | None:
        self.refresh()
        return self._version

    def _require_version(self) -> _Version:
        version = self._current()
        if version is None:
            raise KnowledgeBaseError(_no_such_kb(self.root, self.name))
        return version

    def _check_requested(
        self, embedding_model: str | None, chunk_size: int | None, chunk_overlap: int | None, store: str | None
    ) -> None:
        recorded = self.embedding_model
        if embedding_model is not None and not same_model(recorded, embedding_model):
            raise EmbeddingModelError(
                f"knowledge base {self.name!r} was built with embedding model {recorded!r}, not "
                f"{model_identity(embedding_model)!r}; query it with its own model (leave --embedding out) "
                "or build a new knowledge base with --kb OTHER_NAME"
            )
        for key, wanted in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
            have = self.manifest["chunking"][key]
            if wanted is not None and wanted != have:
                raise KnowledgeBaseError(
                    f"knowledge base {self.name!r} was built with {key} {have}, not {wanted}; leave "
                    f"--{key.replace('_', '-')} out, or use a new --kb name (or `ingest drop --kb {self.name}` first)"
                )
        if store is not None and self.store is not None and store != self.store:
            raise KnowledgeBaseError(
                f"knowledge base {self.name!r} keeps its vectors in {self.store}, not {store}; leave --store "
                "out (kb.store only applies to new knowledge bases), or use a new --kb name"
            )

    def _get_embeddings(self) -> Any:
        with self._lock:
            if self._embeddings is None:
                self._embeddings = load_embeddings(self.embedding_model, device=self.device, batch_size=self.batch_size)
            return self._embeddings

    def set_embeddings(self, embeddings: Any) -> None:
        """Use an already-loaded LangChain ``Embeddings`` object (e.g. shared across knowledge bases)."""
        self._embeddings = embeddings

    # --- searching ------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        mode: Mode | None = None,
        k: int | None = None,
        score_threshold: float | None = None,
        rerank: bool | None = None,
    ) -> list[Document]:
        """The ``k`` best chunks for ``query`` as Documents (metadata: source, doc_id, chapter,
        chapter_title, start, end, score, chunk_id).

        ``score`` is the cosine similarity (dense), the BM25 score (bm25) or the reciprocal-rank
        fusion score (hybrid); ``score_threshold`` drops hits scoring below it. With a reranker
        configured (or ``rerank=True``) the candidates are reordered by the cross-encoder and
        ``score`` becomes its score.
        """
        mode = _check_mode(mode or self.mode)
        k = self.top_k if k is None else k
        if k < 1:
            raise KnowledgeBaseError(f"k must be at least 1 (got {k})")
        threshold = self.score_threshold if score_threshold is None else score_threshold
        use_reranker = bool(self.reranker) if rerank is None else rerank
        version = self._current()
        if version is None or not query.strip():
            return []
        try:
            return self._search_version(version, query, mode, k, threshold, use_reranker)
        except KnowledgeBaseError:
            # Milvus rows of a version stay until two builds later; a search that fell that far
            # behind retries once on the newest version instead of reporting lost vectors.
            if not self.refresh() or self._version is None:
                raise
            return self._search_version(self._version, query, mode, k, threshold, use_reranker)

    def _search_version(
        self, version: _Version, query: str, mode: Mode, k: int, threshold: float | None, use_reranker: bool
    ) -> list[Document]:
        if self.keyword_only:
            if mode == "dense":
                raise KnowledgeBaseError(
                    f"knowledge base {self.name!r} is keyword-only (built with --embedding none); "
                    "use --mode bm25, or rebuild it with an embedding model"
                )
            mode = "bm25"
        depth = max(CANDIDATE_DEPTH, 4 * k) if (mode == "hybrid" or use_reranker) else k
        extra: dict[int, dict[str, float]] = {}
        if mode == "dense":
            hits = self._dense_hits(version, query, depth)
        elif mode == "bm25":
            hits = version.bm25.search(tokenize(query), depth)
        else:
            dense = self._dense_hits(version, query, depth)
            sparse = version.bm25.search(tokenize(query), depth)
            for key, ranked in (("dense_score", dense), ("bm25_score", sparse)):
                for chunk_id, score in ranked:
                    extra.setdefault(chunk_id, {})[key] = score
            hits = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in sparse]])
        if threshold is not None:
            hits = [(i, s) for i, s in hits if s >= threshold]
        hits = hits[: max(depth, k)] if use_reranker else hits[:k]
        chunks = version.docstore.chunks(i for i, _ in hits)
        docs = [_to_document(chunks[i], s, mode=mode, **extra.get(i, {})) for i, s in hits if i in chunks]
        if use_reranker:
            docs = self._rerank(query, docs)[:k]
        return docs

    def _dense_hits(self, version: _Version, query: str, depth: int) -> list[tuple[int, float]]:
        if version.dense is None or len(version.dense) == 0:
            return []
        version.dense.check()
        vector = np.asarray(self._get_embeddings().embed_query(query), dtype=np.float32)
        if vector.shape[0] != version.dense.dimension:
            raise EmbeddingModelError(
                f"the embedding model gives {vector.shape[0]}-dimensional vectors but knowledge base "
                f"{self.name!r} holds {version.dense.dimension}-dimensional ones; use the model it was built with"
            )
        return version.dense.search(vector, min(depth, len(version.dense)))

    def _rerank(self, query: str, docs: list[Document]) -> list[Document]:
        if not docs:
            return docs
        if not self.reranker:
            raise KnowledgeBaseError("rerank=True but no reranker is configured (retrieval.reranker)")
        with self._lock:
            if self._cross_encoder is None:
                self._cross_encoder = load_cross_encoder(self.reranker, device=self.device)
        scores = self._cross_encoder.predict([(query, d.page_content) for d in docs], show_progress_bar=False)
        for doc, score in zip(docs, scores, strict=True):
            doc.metadata["retrieval_score"] = doc.metadata["score"]
            doc.metadata["score"] = float(score)
        return sorted(docs, key=lambda d: -d.metadata["score"])

    def as_retriever(
        self,
        *,
        mode: Mode | None = None,
        k: int | None = None,
        score_threshold: float | None = None,
        rerank: bool | None = None,
    ) -> KnowledgeBaseRetriever:
        """A LangChain retriever over this knowledge base (None = the knowledge base's defaults)."""
        from kb.knowledge_base_retriever import KnowledgeBaseRetriever

        return KnowledgeBaseRetriever(
            knowledge_base=self, mode=mode, k=k, score_threshold=score_threshold, rerank=rerank
        )


def _to_document(chunk: StoredChunk, score: float, **extra: Any) -> Document:
    return Document(
        page_content=chunk.text,
        metadata={
            "source": chunk.source,
            "doc_id": chunk.doc_id,
            "chapter": chunk.chapter,
            "chapter_title": chunk.chapter_title,
            "page": chunk.page,
            "page_end": chunk.page_end,
            "section": chunk.section,
            "start": chunk.start,
            "end": chunk.end,
            "score": float(score),
            "chunk_id": chunk.chunk_id,
            **extra,
        },
    )


def _documents_after(base: _Version | None, deleted: list[str], added: list[DocumentInfo]) -> list[DocumentInfo]:
    kept = [d for d in (base.docstore.documents() if base else []) if d.doc_id not in set(deleted)]
    return kept + added


def _batches(items: Iterable[Chunk], size: int) -> Iterator[list[Chunk]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise KnowledgeBaseError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def _check_unique_sources(incoming: list[_Incoming]) -> None:
    seen: set[str] = set()
    for doc in incoming:
        if doc.source in seen:
            raise KnowledgeBaseError(f"{doc.source} is given twice")
        seen.add(doc.source)


def _maybe_resolve(ref: str) -> str:
    try:
        return source_for_path(ref)
    except (OSError, ValueError):
        return ref


def _no_such_kb(root: Path, name: str) -> str:
    names = KnowledgeBase.list_names(root)
    have = f"existing: {', '.join(names)}" if names else "there are none yet"
    return (
        f"no knowledge base named {name!r} in {root} ({have}); "
        f"create it with `ingest build FILE... --kb {name}`"
    )


__all__ = ["KEYWORD_ONLY", "BuildReport", "KnowledgeBase", "doc_id_for", "source_for_path"]
