"""A named knowledge base under ``kb_root``: the facade over :mod:`kb.build` (the version writer),
:mod:`kb.search`, :mod:`kb.version` (the loaded version), :mod:`kb.manifest` and :mod:`kb.lifecycle`."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from tqdm.auto import tqdm

from kb import lifecycle, storage
from kb.build import VersionWriter
from kb.build_report import BuildReport
from kb.incoming import Incoming, check_unique_sources, doc_id_for, plan, read_file, read_text, source_for_path
from kb.dense_store import STORES
from kb.docstore import Docstore, DocumentInfo, find_document
from kb.embedding import KEYWORD_ONLY, LazyModels
from kb.errors import KnowledgeBaseError, KnowledgeBaseNotFound, StaleVersionError
from kb.manifest import Manifest, NewKBDefaults, Requested, check_requested, new_manifest
from kb.names import validate_kb_name
from kb.search import Query, search_version, to_document
from kb.splitting import Chapter
from kb.types import RetrievalMode, check_mode
from kb.version import LiveVersion, LoadedVersion

if TYPE_CHECKING:
    from configs import Settings
    from kb.knowledge_base_retriever import KnowledgeBaseRetriever


class KnowledgeBase:
    """A named knowledge base in ``root/name`` (contract: docs/ARCHITECTURE.md#kb).

    ``create=True`` lets the first add (or :meth:`create`) write a missing one. ``embedding_model``,
    ``chunk_size``, ``chunk_overlap``, ``store``: None = "what it was built with" (``new_defaults`` for
    a new one); given, they must match, except that a keyword-only one gains vectors on the next add."""

    def __init__(
        self, root: str | os.PathLike[str], name: str, *, create: bool = False, embedding_model: str | None = None,
        chunk_size: int | None = None, chunk_overlap: int | None = None, device: str = "auto", batch_size: int = 64,
        mode: RetrievalMode = "hybrid", top_k: int = 5, score_threshold: float | None = None,
        reranker: str | None = None, store: str | None = None, milvus_uri: str | None = None,
        milvus_token_env: str = "MILVUS_TOKEN", new_defaults: NewKBDefaults | None = None,
    ) -> None:
        self.name, self.root = validate_kb_name(name), Path(root).expanduser()
        self.path = self.root / self.name  # the NFC name every entry point uses
        self.device, self.batch_size, self.mode = device, batch_size, check_mode(mode)
        self.top_k, self.score_threshold, self.reranker = top_k, score_threshold, reranker
        self.milvus_uri, self.milvus_token_env = milvus_uri, milvus_token_env
        if store is not None and store not in STORES:
            raise KnowledgeBaseError(f"unknown vector store {store!r}; use one of {', '.join(STORES)}")
        self._requested = Requested(embedding_model, chunk_size, chunk_overlap, store)
        self._defaults = new_defaults or NewKBDefaults()
        self._create = create
        self._write_mutex = threading.Lock()  # one build at a time per object (the flock covers processes)
        path, kb_name = self.path, self.name  # no reference cycle back to self: closing is prompt
        self._live = LiveVersion(path, kb_name, make_store=lambda m: lifecycle.make_store(
            m, kb_dir=path, kb_name=kb_name, milvus_uri=milvus_uri, token_env=milvus_token_env))
        self._models = LazyModels(device=device, batch_size=batch_size, reranker=reranker)
        self._pending: Manifest | None = None  # settings of a knowledge base not written yet
        self._unchecked = False  # the request was not yet compared with a manifest (#14)
        self._add_vectors: str | None = None  # embedding model a keyword-only KB is to gain
        loaded = storage.open_current(self.path, self._live.switch_to) or self._open_without_pointer()
        if loaded is not None:
            self._add_vectors = check_requested(loaded.manifest, self._requested, kb_name=self.name)
        elif not create:
            raise self._not_found()
        else:
            self._pending, self._unchecked = new_manifest(self._requested, self._defaults), True

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str | None = None, create: bool = False,
                      embedding_model: str | None = None, chunk_size: int | None = None,
                      chunk_overlap: int | None = None, store: str | None = None) -> KnowledgeBase:
        """Open ``name`` (default ``settings.kb_name``) under ``settings.kb_root``; ``embedding.*``,
        ``chunking.*`` and ``kb.store`` only seed new knowledge bases, ``retrieval.*`` set the defaults."""
        defaults = NewKBDefaults(
            embedding_model=settings.embedding.model, chunk_size=settings.chunking.chunk_size,
            chunk_overlap=settings.chunking.chunk_overlap, store=settings.kb.store,
            if_unavailable=settings.embedding.if_unavailable,
        )
        return cls(
            settings.kb_root, name or settings.kb_name, create=create, embedding_model=embedding_model,
            chunk_size=chunk_size, chunk_overlap=chunk_overlap, device=settings.embedding.device,
            batch_size=settings.embedding.batch_size, mode=settings.retrieval.mode, top_k=settings.retrieval.top_k,
            score_threshold=settings.retrieval.score_threshold, reranker=settings.retrieval.reranker, store=store,
            milvus_uri=settings.kb.milvus_uri, milvus_token_env=settings.kb.milvus_token_env, new_defaults=defaults,
        )

    # --- properties (from the manifest parsed once per version) ---
    @property
    def _manifest(self) -> Manifest:
        version, pending = self._live.version, self._pending
        if version is None and pending is None:
            raise self._not_found()
        return version.manifest if version is not None else pending  # type: ignore[return-value]

    exists = property(lambda self: self._live.version is not None, doc="Whether a version has been written.")
    manifest = property(lambda self: self._manifest.as_dict(), doc="The live manifest as a dict (a copy).")
    embedding_model = property(lambda self: self._manifest.embedding.model, doc="``none`` for keyword-only.")
    keyword_only = property(lambda self: self._manifest.keyword_only)
    dimension = property(lambda self: self._manifest.embedding.dimension)
    chunk_size = property(lambda self: self._manifest.chunking.chunk_size)
    chunk_overlap = property(lambda self: self._manifest.chunking.chunk_overlap)
    store = property(lambda self: None if self.keyword_only else self._manifest.store, doc="faiss, milvus or None.")
    version = property(lambda self: getattr(self._live.version, "name", None), doc="Loaded version folder.")

    def __repr__(self) -> str:
        return f"KnowledgeBase(name={self.name!r}, root={str(self.root)!r}, version={self.version!r})"

    # --- listing and reading ---
    @staticmethod
    def list_names(root: str | os.PathLike[str]) -> list[str]:
        """Names of the knowledge bases under ``root`` (``kb.lifecycle.list_summaries`` for counts)."""
        return lifecycle.list_names(Path(root))

    def list_documents(self) -> list[DocumentInfo]:
        """Every document in the knowledge base, oldest first."""
        with self._reading() as version:
            return version.docstore.documents() if version else []

    def get_document(self, ref: str) -> DocumentInfo:
        """A document by doc_id, source, file path or (unique) file name."""
        return find_document(self.list_documents(), ref, kb_name=self.name)

    def get_document_text(self, ref: str) -> str:
        """The full decoded text of a document (chunk offsets index into it)."""
        with self._document(ref) as (docstore, doc_id):
            return docstore.document_text(doc_id) or ""

    def get_chapters(self, ref: str) -> list[Chapter]:
        """A document's sections: the preamble (``number=None``) if any, then its chapters; ``[]`` without headings."""
        with self._document(ref) as (docstore, doc_id):
            return docstore.chapters(doc_id)

    def get_chunks(self, ref: str) -> list[Document]:
        """A document's chunks in reading order, as Documents (``score`` is 0.0)."""
        with self._document(ref) as (docstore, doc_id):
            return [to_document(c, 0.0) for c in docstore.chunks_of(doc_id)]

    @contextlib.contextmanager
    def _document(self, ref: str) -> Iterator[tuple[Docstore, str]]:  # the docstore held open, and ref's doc_id
        with self._reading(required=True) as version:
            yield version.docstore, find_document(version.docstore.documents(), ref, kb_name=self.name).doc_id

    # --- building ---
    def add_files(self, paths: Iterable[str | os.PathLike[str]], *, sources: Sequence[str] | None = None,
                  show_progress: bool = False, ocr: str = "auto") -> BuildReport:
        """Add or update files (all read and checked before anything is written; unchanged ones skipped);
        ``sources``: labels to record instead of the absolute paths (uploads); ``ocr``: off/auto/force
        for scanned PDF pages and images (kb.loaders)."""
        started, paths = time.perf_counter(), list(paths)
        labels = [source_for_path(p) for p in paths] if sources is None else list(sources)
        if len(labels) != len(paths):
            raise ValueError(f"got {len(labels)} sources for {len(paths)} files; give one source per file")
        pairs = tqdm(list(zip(paths, labels)), desc="reading", unit="file", disable=not show_progress, leave=False)
        return self._write([read_file(path, label, ocr=ocr) for path, label in pairs], [], show_progress, started)

    def add_texts(self, texts: Mapping[str, str], *, show_progress: bool = False) -> BuildReport:
        """Add or update documents given as ``{source label: text}`` (e.g. web uploads)."""
        started = time.perf_counter()
        return self._write([read_text(source, text) for source, text in texts.items()], [], show_progress, started)

    def remove(self, refs: Iterable[str]) -> BuildReport:
        """Remove documents (by doc_id, source, path or unique file name), resolved under the writer lock;
        a reference given twice is one file of the report."""
        return self._write([], list(dict.fromkeys(refs)), False, time.perf_counter())

    def create(self) -> None:
        """Write this new knowledge base now, empty, so every listing shows it (the web UI's create)."""
        self._write([], [], False, time.perf_counter(), create=True)

    def drop(self) -> None:
        """Delete the whole knowledge base, damaged or not (``kb.lifecycle.drop``); the object is closed."""
        with self._write_mutex:
            lifecycle.drop(self.root, self.name, milvus_uri=self.milvus_uri, token_env=self.milvus_token_env)
        self.close()

    @classmethod
    def drop_from_settings(cls, settings: Settings, *, name: str | None = None) -> None:
        """Drop ``name`` without opening it: works on a damaged knowledge base (CLI and UI delete)."""
        name = validate_kb_name(name or settings.kb_name)
        lifecycle.drop(settings.kb_root, name, milvus_uri=settings.kb.milvus_uri, token_env=settings.kb.milvus_token_env)

    def close(self) -> None:
        """Release the docstore (once its readers finish) and the vector-store connections."""
        self._live.close()

    def _write(self, incoming: list[Incoming], refs: list[str], show_progress: bool, started: float, *,
               create: bool = False) -> BuildReport:
        check_unique_sources(incoming)
        report = BuildReport(files=len(incoming) + len(refs))
        # Searches keep running on the current version while a build is written.
        with self._write_mutex, storage.write_lock(self.path):
            storage.clean_trash(self.root)
            base = self._reload_for_write()
            if create and base is not None:
                raise KnowledgeBaseError(f"knowledge base {self.name!r} already exists")
            if base is None:
                lifecycle.check_new_name(self.root, self.name)
            if base is not None and self._add_vectors and base.manifest.keyword_only:
                writer = self._writer(base, show_progress, model=self._add_vectors)
                base = self._live.switch_to(writer.reindex(base.docstore.path, report))
            self._add_vectors = None
            known = base.docstore.documents() if base else []
            to_add, to_delete = plan(known, incoming, refs, report, kb_name=self.name)
            if to_add or to_delete or create:
                self._live.switch_to(self._writer(base, show_progress).write(to_add, to_delete, report))
        report.seconds = time.perf_counter() - started
        return report

    def _open_without_pointer(self) -> LoadedVersion | None:
        """None for a knowledge base not written yet; raises for versions left without ``CURRENT``
        (``storage.pointer_lost``), checked again under the writer lock, which a first build holds
        from renaming its version until ``CURRENT`` names it."""
        if storage.pointer_lost(self.path) is None:
            return None
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(OSError):  # no lock can be made in a read-only kb_root: nor can a build run
                stack.enter_context(storage.write_lock(self.path))
            loaded = storage.open_current(self.path, self._live.switch_to)
            damage = None if loaded is not None else storage.pointer_lost(self.path)
        if damage is not None:
            raise damage
        return loaded

    def _reload_for_write(self) -> LoadedVersion | None:
        """Re-read the knowledge base under the writer lock: another writer may have created, changed or dropped it
        (versions without ``CURRENT`` are damage, never a new knowledge base whose build would delete them)."""
        self.refresh()
        version = self._live.version
        if version is None and (damage := storage.pointer_lost(self.path)) is not None:
            raise damage
        if version is not None and self._unchecked:
            self._add_vectors = check_requested(version.manifest, self._requested, kb_name=self.name)
            self._unchecked = False
        if version is None and self._pending is None:
            raise KnowledgeBaseNotFound(f"knowledge base {self.name!r} was dropped; build it again to recreate it")
        return version

    def _writer(self, base: LoadedVersion | None, show_progress: bool, *, model: str | None = None) -> VersionWriter:
        """A writer for the next version (``model``: the embedding model a keyword-only one gains)."""
        manifest = self._manifest.as_dict()
        if model is not None:
            manifest.update(embedding={"model": model, "dimension": None},
                            vectors={"store": self._requested.store or self._defaults.store})
        return VersionWriter.prepare(
            kb_dir=self.path, kb_name=self.name, manifest=manifest, base=base, show_progress=show_progress,
            store=lambda: self._live.vector_store(manifest, fresh=model is not None),
            embeddings=lambda: self._models.embeddings(manifest["embedding"]["model"]), batch_size=self.batch_size)

    def refresh(self) -> bool:
        """Load the newest version another process built (forget a dropped one); True if anything changed."""
        changed, dropped = self._live.refresh()
        if dropped is not None and self._create:  # may be built again, with the same settings
            self._pending = new_manifest(self._requested, self._defaults, like=dropped)
        elif changed and self._live.version is not None:
            self._pending = None
        return changed

    def _not_found(self) -> KnowledgeBaseNotFound:
        return KnowledgeBaseNotFound(lifecycle.no_such_kb(self.root, self.name))

    @contextlib.contextmanager
    def _reading(self, *, required: bool = False) -> Iterator[Any]:
        """The loaded version, held open while the caller reads (None for one not written yet)."""
        self.refresh()
        missing = None if (self._pending is not None and not required) else self._not_found
        with self._live.reading(missing=missing) as version:
            yield version

    def set_embeddings(self, embeddings: Any) -> None:
        """Use an already-loaded LangChain ``Embeddings`` object (e.g. shared across knowledge bases)."""
        self._models.set_embeddings(embeddings)

    # --- searching ---
    def search(self, query: str, *, mode: RetrievalMode | None = None, k: int | None = None,
               score_threshold: float | None = None, rerank: bool | None = None) -> list[Document]:
        """The ``k`` best chunks for ``query`` (metadata: ``kb.types.ChunkMetadata``); None = the
        knowledge base's defaults. ``score_threshold`` drops hits below it; a reranker reorders."""
        k = self.top_k if k is None else k
        if k < 1:
            raise KnowledgeBaseError(f"k must be at least 1 (got {k})")
        request = Query(text=query, mode=check_mode(mode or self.mode), k=k,
                        threshold=self.score_threshold if score_threshold is None else score_threshold,
                        rerank=bool(self.reranker) if rerank is None else rerank)
        try:
            return self._search(request)
        except StaleVersionError:
            # Milvus rows of a version stay until two builds later; a search that fell that far
            # behind retries once on the newest version (and only for this error).
            if not self.refresh():
                raise
            return self._search(request)

    def _search(self, request: Query) -> list[Document]:
        with self._reading() as version:
            if version is None or not request.text.strip():
                return []
            return search_version(version, request, kb_name=self.name, embed_query=self._embed_query,
                                  cross_encoder=self._models.cross_encoder)

    def _embed_query(self, text: str) -> Any:
        return self._models.embeddings(self.embedding_model).embed_query(text)

    def as_retriever(self, *, mode: RetrievalMode | None = None, k: int | None = None,
                     score_threshold: float | None = None, rerank: bool | None = None,
                     search_type: str = "similarity", search_kwargs: dict[str, Any] | None = None,
                     ) -> KnowledgeBaseRetriever:
        """A LangChain retriever over this knowledge base (None = the knowledge base's defaults).

        ``search_type``/``search_kwargs`` as LangChain's ``VectorStore.as_retriever`` takes them (code
        written for a vector store passes ``search_kwargs={"k": 4}``): ``k``, ``mode``,
        ``score_threshold`` and ``rerank`` are read from it; a key glmkb cannot honour is refused."""
        from kb.knowledge_base_retriever import KnowledgeBaseRetriever

        options = {"mode": mode, "k": k, "score_threshold": score_threshold, "rerank": rerank}
        options.update(retriever_options(search_type, search_kwargs or {}))
        return KnowledgeBaseRetriever(knowledge_base=self, **options)


def retriever_options(search_type: str, search_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The retriever fields LangChain's ``search_type``/``search_kwargs`` name."""
    if search_type not in ("similarity", "similarity_score_threshold"):
        raise KnowledgeBaseError(f"search_type {search_type!r} is not supported; use 'similarity' (or set mode: "
                                 "dense, bm25 or hybrid)")
    unknown = sorted(set(search_kwargs) - {"k", "mode", "score_threshold", "rerank"})
    if unknown:
        raise KnowledgeBaseError(f"search_kwargs {', '.join(unknown)} not supported; glmkb's retriever takes k, mode, "
                                 "score_threshold and rerank")
    if search_type == "similarity_score_threshold" and search_kwargs.get("score_threshold") is None:
        raise KnowledgeBaseError("search_type 'similarity_score_threshold' needs search_kwargs['score_threshold']")
    return dict(search_kwargs)


__all__ = ["KEYWORD_ONLY", "BuildReport", "KnowledgeBase", "doc_id_for", "source_for_path"]
