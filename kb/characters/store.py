"""The character graph of a knowledge base, cached per document beside its versions.

Each document's part (``kb.characters.document``) is computed on first use and written to
``<kb>/characters/<sha256>-v<EXTRACTOR_VERSION>.json`` (atomically: temp file + rename), keyed by
the document's text hash, so it stays valid across KB versions: adding a file computes only
that file's part, removing one just leaves its part out (and ``prune`` deletes it). The graph
of the KB's current documents is merged from the parts on each call (0.1 s for 三国演义).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kb.characters.document import EXTRACTOR_VERSION, DocumentCharacters, extract_document
from kb.characters.graph import CharacterGraph, build_graph

__all__ = ["CACHE_DIR", "character_graph", "document_parts", "prune"]

CACHE_DIR = "characters"
log = logging.getLogger(__name__)


def _cache_file(kb: Any, sha256: str) -> Path:
    return Path(kb.path) / CACHE_DIR / f"{sha256}-v{EXTRACTOR_VERSION}.json"


def _read_part(path: Path) -> DocumentCharacters | None:
    try:
        part = DocumentCharacters.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return part if part.version == EXTRACTOR_VERSION else None


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` via a temp file and rename; a read-only KB just skips the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("character graph cache not written (%s): %s", path, e)


def compute_part(kb: Any, info: Any) -> DocumentCharacters:
    """Extract one KB document's part from its stored text, chapters and chunks."""
    return extract_document(
        kb.get_document_text(info.doc_id),
        source=info.source,
        doc_id=info.doc_id,
        sha256=info.sha256,
        chapters=kb.get_chapters(info.doc_id),
        chunks=kb.get_chunks(info.doc_id),
    )


def document_parts(
    kb: Any, *, source: str | None = None, on_compute: Callable[[Any], None] | None = None
) -> list[DocumentCharacters]:
    """The parts of the KB's documents (or of ``source`` only), computing missing ones."""
    infos = [kb.get_document(source)] if source else kb.list_documents()
    parts = []
    computed = False
    for info in infos:
        path = _cache_file(kb, info.sha256)
        part = _read_part(path)
        if part is None or part.doc_id != info.doc_id:
            if on_compute is not None:
                on_compute(info)
            part = compute_part(kb, info)
            _write_atomic(path, part.to_dict())
            computed = True
        parts.append(part)
    if computed and source is None:
        prune(kb)  # parts of removed files and of older extractor versions
    return parts


def prune(kb: Any) -> int:
    """Delete cached parts of documents no longer in the KB; returns how many."""
    folder = Path(kb.path) / CACHE_DIR
    if not folder.is_dir():
        return 0
    keep = {_cache_file(kb, info.sha256).name for info in kb.list_documents()}
    removed = 0
    for path in folder.glob("*.json"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def character_graph(
    kb: Any,
    *,
    source: str | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    chapters: tuple[int, int] | None = None,
    on_compute: Callable[[Any], None] | None = None,
) -> CharacterGraph:
    """The person graph of a knowledge base (or one of its documents), from cached parts."""
    parts = document_parts(kb, source=source, on_compute=on_compute)
    return build_graph(parts, aliases=aliases, chapters=chapters)
