"""The chunk and document store of one knowledge-base version: a single SQLite file.

SQLite (not pickle) so that opening a knowledge base can never run code from its files.
Readers open it read-only and immutable (no journal files appear in a published version).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.errors import KnowledgeBaseError
from kb.manifest import damaged
from kb.splitting import Chapter, Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    encoding TEXT NOT NULL,
    chars INTEGER NOT NULL,
    added_at TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chapters (
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    number INTEGER,
    title TEXT,
    heading TEXT,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    PRIMARY KEY (doc_id, ordinal)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    chapter INTEGER,
    chapter_title TEXT,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens TEXT NOT NULL,
    page INTEGER,
    page_end INTEGER,
    section TEXT
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, ordinal);
CREATE TABLE IF NOT EXISTS document_blocks (
    doc_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (doc_id, ordinal)
);
"""
# Where a chunk lies (page, page_end, section): columns added after the first docstores, which
# get them when a new version is written from them and read as NULL until then.
_PLACE_COLUMNS = (("page", "INTEGER"), ("page_end", "INTEGER"), ("section", "TEXT"))
# A document's text is written block by block into ``document_blocks`` as it streams in;
# ``documents.text`` stays empty for those (it held the whole text in docstores written before).


@dataclass(frozen=True)
class DocumentInfo:
    """One source document in a knowledge base."""

    doc_id: str
    source: str
    sha256: str  # of the decoded text (UTF-8)
    encoding: str  # encoding the file was decoded from
    chars: int
    chunks: int
    chapters: int  # numbered chapters (the preamble is not counted)
    added_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class StoredChunk:
    """A chunk row with its document's source."""

    chunk_id: int
    doc_id: str
    source: str
    chapter: int | None
    chapter_title: str | None
    start: int
    end: int
    text: str
    page: int | None = None
    page_end: int | None = None
    section: str | None = None


def _kb_name(path: Path) -> str:
    """The knowledge base a docstore belongs to (``kb_root/<name>/<version>/docstore.sqlite``)."""
    return path.parent.parent.name


def find_document(documents: Sequence[DocumentInfo], ref: str, *, kb_name: str) -> DocumentInfo:
    """A document by doc_id, source, file path or (unique) file name; KnowledgeBaseNotFound otherwise."""
    from kb.incoming import source_for_path
    from kb.errors import KnowledgeBaseNotFound

    try:
        resolved = source_for_path(ref)
    except (OSError, ValueError):
        resolved = ref
    for match in (lambda d: d.doc_id == ref or d.source == ref, lambda d: d.source == resolved):
        found = [d for d in documents if match(d)]
        if found:
            return found[0]
    by_name = [d for d in documents if Path(d.source).name == ref]
    if len(by_name) == 1:
        return by_name[0]
    hint = "several documents are named like that; give the full path" if by_name else "it is not in it"
    raise KnowledgeBaseNotFound(
        f"no document {ref!r} in knowledge base {kb_name!r} ({hint}); `ingest list --kb {kb_name}` shows its documents"
    )


def find_documents_to_remove(documents: Sequence[DocumentInfo], ref: str, *, kb_name: str) -> list[DocumentInfo]:
    """What ``ingest remove REF`` removes: the document :func:`find_document` names, or, for a
    folder or archive that was built (``~/manuals``, ``资料.zip``), every document recorded under it."""
    from kb.incoming import source_for_path
    from kb.errors import KnowledgeBaseNotFound

    try:
        return [find_document(documents, ref, kb_name=kb_name)]
    except KnowledgeBaseNotFound:
        try:
            resolved = source_for_path(ref)
        except (OSError, ValueError):
            resolved = ref
        for prefix in (ref, resolved):
            inside = [d for d in documents if d.source.startswith(prefix.rstrip("/") + "/")]
            if inside:
                return inside
        raise


TOKEN_BATCH = 2000
"""Chunks whose BM25 tokens are read from SQLite at a time while an index is built."""


def _joined(tokens: str | list[str]) -> str:
    return tokens if isinstance(tokens, str) else " ".join(tokens)


class Docstore:
    """Typed access to a docstore file; thread-safe (one connection behind a lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)").fetchall()}
        self._place = "c.page, c.page_end, c.section" if "section" in columns else "NULL, NULL, NULL"

    @classmethod
    def open_readonly(cls, path: Path) -> Docstore:
        """Open a published docstore without ever writing to it."""
        uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("SELECT count(*) FROM documents").fetchone()
        except sqlite3.DatabaseError as e:
            raise damaged(_kb_name(path), f"its docstore {path} is unreadable ({e})") from e
        return cls(conn, path)

    @classmethod
    def open_writable(cls, path: Path) -> Docstore:
        """Open (creating if needed) a docstore in a version that is being written."""
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)").fetchall()}
        for column, kind in _PLACE_COLUMNS:
            if column not in columns:  # a docstore copied from a version written before pages/sections
                conn.execute(f"ALTER TABLE chunks ADD COLUMN {column} {kind}")
        conn.execute("BEGIN")
        return cls(conn, path)

    def commit_and_close(self) -> None:
        """Commit a writable docstore and close it, leaving one self-contained file."""
        with self._lock:
            self._conn.execute("COMMIT")
            self._conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                raise damaged(_kb_name(self.path), f"its docstore {self.path} is unreadable ({e})") from e

    # --- writing -------------------------------------------------------------------------

    def add_document(
        self,
        *,
        doc_id: str,
        source: str,
        sha256: str,
        encoding: str,
        chars: int,
        added_at: str,
        chapters: Sequence[Chapter],
    ) -> None:
        """Record a document whose text blocks and chunks were added (:meth:`add_text_block`,
        :meth:`add_chunks`)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc_id, source, sha256, encoding, chars, added_at, ""),
            )
            self._conn.executemany(
                "INSERT INTO chapters VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(doc_id, i, c.number, c.title, c.heading, c.start, c.end) for i, c in enumerate(chapters)],
            )

    def add_text_block(self, doc_id: str, ordinal: int, text: str) -> None:
        """Store the next block of a document's text (blocks join to the whole text)."""
        with self._lock:
            self._conn.execute("INSERT INTO document_blocks VALUES (?, ?, ?)", (doc_id, ordinal, text))

    def add_chunks(
        self,
        doc_id: str,
        *,
        first_ordinal: int,
        chunk_ids: Sequence[int],
        chunks: Sequence[Chunk],
        chunk_tokens: Sequence[str | list[str]],
    ) -> None:
        """Store the next chunks of a document, in reading order (tokens as lists or space-joined)."""
        with self._lock:
            self._conn.executemany(
                "INSERT INTO chunks (id, doc_id, ordinal, chapter, chapter_title, char_start, char_end, text, tokens, "
                "page, page_end, section) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        cid, doc_id, first_ordinal + i, c.chapter, c.chapter_title, c.start, c.end, c.text,
                        _joined(tokens), c.page, c.page_end, c.section,
                    )
                    for i, (cid, c, tokens) in enumerate(zip(chunk_ids, chunks, chunk_tokens, strict=True))
                ],
            )

    def delete_document(self, doc_id: str) -> list[int]:
        """Remove a document and return the ids of its chunks."""
        ids = [row[0] for row in self._query("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]
        with self._lock:
            for table in ("chunks", "chapters", "document_blocks", "documents"):
                self._conn.execute(f"DELETE FROM {table} WHERE doc_id = ?", (doc_id,))
        return ids

    # --- reading -------------------------------------------------------------------------

    def documents(self) -> list[DocumentInfo]:
        """Every document, in the order they were added."""
        rows = self._query(
            "SELECT d.doc_id, d.source, d.sha256, d.encoding, d.chars, "
            "(SELECT count(*) FROM chunks c WHERE c.doc_id = d.doc_id), "
            "(SELECT count(*) FROM chapters h WHERE h.doc_id = d.doc_id AND h.number IS NOT NULL), "
            "d.added_at FROM documents d ORDER BY d.added_at, d.source"
        )
        return [DocumentInfo(*row) for row in rows]

    def document_text(self, doc_id: str) -> str | None:
        """A document's whole text (None if there is no such document)."""
        rows = self._query("SELECT text FROM documents WHERE doc_id = ?", (doc_id,))
        if not rows:
            return None
        if rows[0][0]:  # written before text went into blocks (empty documents are never stored)
            return rows[0][0]
        blocks = self._query("SELECT text FROM document_blocks WHERE doc_id = ? ORDER BY ordinal", (doc_id,))
        return "".join(block for (block,) in blocks)

    def chapters(self, doc_id: str) -> list[Chapter]:
        rows = self._query(
            "SELECT number, title, heading, char_start, char_end FROM chapters WHERE doc_id = ? ORDER BY ordinal",
            (doc_id,),
        )
        return [Chapter(*row) for row in rows]

    def chunk_ids(self) -> list[int]:
        """All chunk ids, ascending (the row order of the BM25 index)."""
        return [row[0] for row in self._query("SELECT id FROM chunks ORDER BY id")]

    def chunk_tokens(self) -> Iterator[list[str]]:
        """BM25 tokens of every chunk, in :meth:`chunk_ids` order, read in batches (bounded memory)."""
        last = -1
        while True:
            rows = self._query("SELECT id, tokens FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (last, TOKEN_BATCH))
            for _, tokens in rows:
                yield tokens.split(" ") if tokens else []
            if len(rows) < TOKEN_BATCH:
                return
            last = rows[-1][0]

    def chunk_count(self) -> int:
        return int(self._query("SELECT count(*) FROM chunks")[0][0])

    def integrity_problem(self) -> str | None:
        """None if SQLite's quick check passes, else its first complaint (for ``ingest doctor``)."""
        try:
            rows = self._query("PRAGMA quick_check")
        except KnowledgeBaseError as e:
            return str(e)
        return None if rows and rows[0][0] == "ok" else str(rows[0][0] if rows else "no answer")

    def chunk_texts(self, batch: int = TOKEN_BATCH) -> Iterator[list[tuple[int, str]]]:
        """``(chunk id, text)`` of every chunk in id order, ``batch`` at a time (for re-embedding)."""
        last = -1
        while True:
            rows = self._query("SELECT id, text FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (last, batch))
            if rows:
                yield [(int(i), t) for i, t in rows]
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def set_chunk_tokens(self, tokens: Mapping[int, str | list[str]]) -> None:
        """Replace stored chunks' BM25 tokens, by chunk id (a knowledge base whose tokenization changed)."""
        with self._lock:
            self._conn.executemany("UPDATE chunks SET tokens = ? WHERE id = ?",
                                   [(_joined(t), chunk_id) for chunk_id, t in tokens.items()])

    def max_chunk_id(self) -> int:
        rows = self._query("SELECT max(id) FROM chunks")
        return rows[0][0] if rows and rows[0][0] is not None else -1

    def chunks(self, ids: Iterable[int]) -> dict[int, StoredChunk]:
        """The chunks with these ids (missing ids are left out)."""
        ids = list(ids)
        out: dict[int, StoredChunk] = {}
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            marks = ",".join("?" * len(batch))
            for row in self._query(
                "SELECT c.id, c.doc_id, d.source, c.chapter, c.chapter_title, c.char_start, c.char_end, c.text, "
                f"{self._place} FROM chunks c JOIN documents d ON d.doc_id = c.doc_id WHERE c.id IN ({marks})",
                batch,
            ):
                out[row[0]] = StoredChunk(*row)
        return out

    def chunk_ids_in_chapters(self, first: int, last: int) -> list[int]:
        """Ids of the chunks in chapters ``first..last`` (numbers, inclusive) of every document, in reading order."""
        rows = self._query("SELECT id FROM chunks WHERE chapter BETWEEN ? AND ? ORDER BY doc_id, ordinal", (first, last))
        return [row[0] for row in rows]

    def chunks_of(self, doc_id: str) -> list[StoredChunk]:
        """A document's chunks in reading order."""
        rows = self._query(
            "SELECT c.id, c.doc_id, d.source, c.chapter, c.chapter_title, c.char_start, c.char_end, c.text, "
            f"{self._place} FROM chunks c JOIN documents d ON d.doc_id = c.doc_id WHERE c.doc_id = ? ORDER BY c.ordinal",
            (doc_id,),
        )
        return [StoredChunk(*row) for row in rows]
