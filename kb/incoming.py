"""What a build takes in: source documents read and scanned (:class:`Incoming`, :func:`read_file`, the
one seam between file formats and the build) and the :func:`plan` of what to add and delete."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.build_report import BuildReport
from kb.docstore import DocumentInfo, find_documents_to_remove
from kb.errors import KnowledgeBaseError
from kb.loaders import LoadedDocument, Place, open_document
from kb.loaders.document import SectionIndex
from kb.splitting import Chapter, ChapterScanner


@dataclass
class Incoming:
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
    def scan(cls, source: str, encoding: str, blocks: Callable[[], Iterable[str]]) -> Incoming:
        """Read the text once for its hash, length and chapters (its 第N回/章 lines)."""
        hasher, scanner, chars = hashlib.sha256(), ChapterScanner(), 0
        for block in blocks():
            hasher.update(block.encode("utf-8"))
            scanner.feed(block)
            chars += len(block)
        return cls(source, encoding, hasher.hexdigest(), chars, scanner.finish(), blocks)

    def with_document(self, document: LoadedDocument) -> Incoming:
        """This scan of ``document``'s text with its pages, and its own headings (PDF outline,
        DOCX/HTML/Markdown headings, EPUB contents) as chapters where it has them."""
        chapters = document.chapters(length=self.chars)
        return dataclasses.replace(self, chapters=self.chapters if chapters is None else chapters, document=document)

    def sections(self) -> list[Chapter]:
        """Where chunks are cut: the chapters, and inside them any lower heading (DOCX/PDF/EPUB/...)."""
        return self.document.sections(self.chapters) if self.document is not None else self.chapters

    def locator(self) -> Callable[[int, int], Place]:
        """``place(start, end)`` of this document's chunks: pages and heading path."""
        if self.document is not None:
            return self.document.locator(self.chapters)
        sections = SectionIndex((), self.chapters)
        return lambda start, end: Place(section=sections.at(start))


def read_file(path: str | os.PathLike[str], source: str, *, ocr: str = "auto") -> Incoming:
    """A file checked and scanned for a build: the one place a build gets a file's text
    (any format :func:`kb.loaders.open_document` reads; ``ocr`` off/auto/force)."""
    document = open_document(path, ocr=ocr)
    return Incoming.scan(source, document.encoding, document.blocks).with_document(document)


def read_text(source: str, text: str) -> Incoming:
    """A document given as text (``add_texts``)."""
    if not text.strip():
        raise KnowledgeBaseError(f"{source} is empty; there is no text to add")
    blocks = [text.removeprefix("\ufeff")]
    return Incoming.scan(source, "text", lambda: blocks)


def doc_id_for(source: str) -> str:
    """Stable id of a source within a knowledge base (same path -> same id across rebuilds)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def source_for_path(path: str | os.PathLike[str]) -> str:
    """How a file is recorded as ``source``: its absolute path."""
    return str(Path(path).expanduser().resolve())


def check_unique_sources(incoming: Sequence[Incoming]) -> None:
    seen: set[str] = set()
    for doc in incoming:
        if doc.source in seen:
            raise KnowledgeBaseError(f"{doc.source} is given twice")
        seen.add(doc.source)


def plan(
    known: Sequence[DocumentInfo], incoming: Sequence[Incoming], refs: Sequence[str], report: BuildReport, *, kb_name: str
) -> tuple[list[Incoming], list[str]]:
    """What a build does to the current documents ``known``: the documents to add (new or
    changed) and the doc ids to delete (``refs`` removed, changed ones replaced). Unchanged
    files are skipped; a ref that names no document raises KnowledgeBaseNotFound."""
    by_id = {d.doc_id: d for d in known}
    to_delete = list(dict.fromkeys(
        d.doc_id for ref in refs for d in find_documents_to_remove(known, ref, kb_name=kb_name)))
    report.removed = [by_id[d].source for d in to_delete]
    to_add: list[Incoming] = []
    for doc in incoming:
        old = by_id.get(doc.doc_id)
        if old is not None and old.sha256 == doc.sha256:
            report.unchanged.append(doc.source)
            report.chunks_skipped += old.chunks
            continue
        to_add.append(doc)
        (report.replaced if old is not None else report.added).append(doc.source)
        if old is not None:
            to_delete.append(doc.doc_id)
    return to_add, to_delete


__all__ = ["Incoming", "check_unique_sources", "doc_id_for", "plan", "read_file", "read_text", "source_for_path"]
