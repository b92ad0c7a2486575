"""``KnowledgeBases``: the process's open knowledge bases by name, shared by every front end.

Each is opened once and given one ``SharedEmbeddings``; one created here is written to disk at
once (empty) and listed while it is written. Every call re-reads what is on disk, so a KB dropped
or rebuilt by another process is forgotten or reopened.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.errors import Missing, NotReady, UserError, one_line
from app.shared_embeddings import EmbeddingSource, SharedEmbeddings
from configs import Settings
from kb import BuildReport, DocumentInfo, KnowledgeBase, KnowledgeBaseError, validate_kb_name
from kb.lifecycle import confusable_message
from kb.names import confusable_name
from kb.unpacking import unpacking_folder

__all__ = ["KnowledgeBases", "check_kb_name", "doc_label"]

log = logging.getLogger(__name__)


class KnowledgeBases:
    """The shared ``KnowledgeBase`` objects under ``settings.kb_root`` (thread-safe)."""

    def __init__(self, settings: Settings, embeddings: EmbeddingSource) -> None:
        self.settings = settings
        self.embeddings = embeddings
        self._kbs: dict[str, KnowledgeBase] = {}
        self._pending: set[str] = set()
        self._pending_models: dict[str, str | None] = {}  # the embedding model chosen at creation
        self._lock = threading.RLock()

    def list_kbs(self) -> list[str]:
        """Built knowledge bases under kb_root plus ones created here and not yet built."""
        with self._lock:
            built = set(KnowledgeBase.list_names(self.settings.kb_root))
            self._pending -= built
            return sorted(built | self._pending)

    def create_kb(self, name: str | None, *, embedding_model: str | None = None) -> str:
        """Create knowledge base ``name`` on disk now, empty, built later with ``embedding_model``
        ("none" = keyword-only; None = ``embedding.model``): ``ingest list``, ``GET /v1/kb`` and
        every other process see it at once (issue 18 #7: it used to live in memory until built)."""
        name = check_kb_name(name)
        with self._lock:
            if name in KnowledgeBase.list_names(self.settings.kb_root) or name in self._pending:
                raise UserError(f"知识库 {name} 已存在", f"knowledge base {name!r} already exists")
            other = confusable_name(name, self.list_kbs())
            if other is not None:  # glmkb #20.16 (kb.lifecycle.check_new_name refuses it too)
                raise UserError(f"知识库名称 {name} 与已有的 {other} 看起来相同，请直接使用 {other} 或换一个名称",
                                confusable_message(name, other), param="name", code="kb_name_confusable")
            self._pending.add(name)  # reserved while it is written
            self._pending_models[name] = embedding_model
        try:
            kb = KnowledgeBase.from_settings(self.settings, name=name, create=True, embedding_model=embedding_model)
            kb.create()
            self._share_embeddings(kb)
            with self._lock:
                self._kbs[name] = kb
        finally:
            with self._lock:
                self._pending.discard(name)
                self._pending_models.pop(name, None)
        return name

    def kb(self, name: str | None) -> KnowledgeBase:
        """The shared ``KnowledgeBase`` ``name`` (opened once; it reloads new builds).

        One dropped since it was opened here (by any process) is forgotten and ``Missing``;
        one dropped and built again is opened afresh.
        """
        name = check_kb_name(name)
        with self._lock:
            if name not in self.list_kbs():
                self._kbs.pop(name, None)
                raise Missing(
                    f"没有名为 {name} 的知识库，请先在“知识库管理”中创建",
                    f"knowledge base {name!r} does not exist: create it in the Manage tab first, or "
                    "with `ingest build` (GET /v1/kb lists them)",
                    param="name",
                    code="kb_not_found",
                )
            kb = self._kbs.get(name)
            if kb is None or not (kb.exists or name in self._pending):
                pending = name in self._pending
                model = self._pending_models.get(name) if pending else None
                kb = KnowledgeBase.from_settings(self.settings, name=name, create=pending, embedding_model=model)
                self._share_embeddings(kb)
                self._kbs[name] = kb
            return kb

    def _share_embeddings(self, kb: KnowledgeBase) -> None:
        kb.set_embeddings(SharedEmbeddings(self.embeddings, lambda kb=kb: kb.embedding_model))

    def summary(self, name: str) -> dict[str, Any]:
        """Counts and how a knowledge base was built (``error`` when it cannot be read)."""
        try:
            kb = self.kb(name)
            docs = kb.list_documents()
        except (KnowledgeBaseError, OSError, ValueError, NotReady) as e:
            log.warning("knowledge base %s could not be read: %s", name, e)
            return {"name": name, "error": one_line(e)}
        return {
            "name": name,
            "documents": len(docs),
            "chunks": sum(d.chunks for d in docs),
            "embedding_model": kb.embedding_model,
            "keyword_only": kb.keyword_only,
            "chunk_size": kb.chunk_size,
            "chunk_overlap": kb.chunk_overlap,
        }

    def add_files(self, name: str | None, paths: Sequence[Path]) -> BuildReport:
        """Decode and add uploaded files, recorded under their file names (re-uploads replace);
        a ZIP, tar, 7z or RAR archive of documents adds each one, as ``资料.zip/制度/请假.docx``
        (``kb.loaders.folders``); files of other types in it are counted in the report, not read.

        Progress goes through tqdm (``show_progress``), which ``gr.Progress(track_tqdm=True)``
        turns into the page's progress bar.
        """
        from kb.loaders.folders import expand_documents

        kb = self.kb(name)
        with unpacking_folder(kb.root) as unpacked:
            found = expand_documents(paths, source=lambda path: path.name, unpack_into=unpacked)
            report = kb.add_files(found.files, sources=found.sources, show_progress=True)
        report.skipped, report.unread = found.skipped, found.unread
        with self._lock:
            self._pending.discard(kb.name)
        return report

    def remove_document(self, name: str | None, doc_id: str) -> str:
        """Remove one document; returns its label for the status line."""
        kb = self.kb(name)
        label = doc_label(kb.get_document(doc_id))
        kb.remove([doc_id])
        return label

    def drop_kb(self, name: str | None) -> None:
        """Delete a knowledge base and its folder, damaged or not (it is never opened for this)."""
        name = check_kb_name(name)
        with self._lock:
            kb = self._kbs.pop(name, None)
            self._pending.discard(name)
        if kb is not None:
            kb.close()
        KnowledgeBase.drop_from_settings(self.settings, name=name)


def check_kb_name(name: str | None) -> str:
    """A safe knowledge-base folder name (``kb.validate_kb_name``), or a UserError."""
    name = (name or "").strip()
    if not name:
        raise UserError("请先选择或输入知识库名称", "choose or type a knowledge-base name first", param="name")
    try:
        return validate_kb_name(name)
    except KnowledgeBaseError as e:
        raise UserError(f"知识库名称无效：{name}", one_line(e), param="name", code="invalid_kb_name") from e


def doc_label(info: DocumentInfo) -> str:
    """A document's name for pickers and tables: the file name it was uploaded or built from."""
    return Path(info.source.replace("\\", "/")).name or info.doc_id
