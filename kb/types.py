"""The vocabularies and the chunk-metadata contract every package shares (one copy each).

``RetrievalMode`` is the one retrieval-mode literal (kb, chains, app, configs and ingest import
it). ``ChunkMetadata`` is what every ``Document`` a knowledge base returns carries;
:func:`chunk_metadata` builds it and :func:`parse_chunk_metadata` reads it back (from a
Document, an API payload or a test), so no caller re-types the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, get_args

# kb.errors is imported inside the functions: configs.settings imports this module, and
# kb.errors imports configs.errors (a top-level import here would be a cycle).

RetrievalMode = Literal["dense", "bm25", "hybrid"]
"""dense vectors, BM25 keywords (jieba), or both fused by reciprocal rank."""
RETRIEVAL_MODES: tuple[str, ...] = get_args(RetrievalMode)


def check_mode(mode: str) -> RetrievalMode:
    """``mode`` if it is a retrieval mode, else a one-line KnowledgeBaseError naming the choices."""
    if mode not in RETRIEVAL_MODES:
        from kb.errors import KnowledgeBaseError

        raise KnowledgeBaseError(f"unknown retrieval mode {mode!r}; use one of {', '.join(RETRIEVAL_MODES)}")
    return mode  # type: ignore[return-value]


class ChunkMetadata(TypedDict):
    """Metadata of one chunk (docs/ARCHITECTURE.md#kb).

    ``source``: the file's absolute path or the label it was added under; ``doc_id``:
    sha256(source)[:16]; ``chapter``/``chapter_title``: None before the first heading;
    ``start``/``end``: character offsets into the decoded text (``text[start:end]`` is the
    chunk); ``score``: higher is better (cosine, BM25, RRF or the reranker's); ``chunk_id``:
    never reused within a knowledge base. ``page``/``page_end``/``section`` are set by
    loaders of paged or sectioned formats (PDF, DOCX, EPUB).
    """

    source: str
    doc_id: str
    chapter: int | None
    chapter_title: str | None
    start: int
    end: int
    chunk_id: int
    score: float
    page: NotRequired[int | None]
    page_end: NotRequired[int | None]
    section: NotRequired[str | None]
    mode: NotRequired[RetrievalMode]
    dense_score: NotRequired[float]
    bm25_score: NotRequired[float]
    retrieval_score: NotRequired[float]


_REQUIRED: dict[str, tuple[type, ...]] = {
    "source": (str,),
    "doc_id": (str,),
    "chapter": (int, type(None)),
    "chapter_title": (str, type(None)),
    "start": (int,),
    "end": (int,),
    "chunk_id": (int,),
    "score": (float, int),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "page": (int, type(None)),
    "page_end": (int, type(None)),
    "section": (str, type(None)),
    "mode": (str,),
    "dense_score": (float, int),
    "bm25_score": (float, int),
    "retrieval_score": (float, int),
}


def chunk_metadata(
    *,
    source: str,
    doc_id: str,
    chapter: int | None,
    chapter_title: str | None,
    start: int,
    end: int,
    chunk_id: int,
    score: float = 0.0,
    **extra: Any,
) -> ChunkMetadata:
    """The metadata of one chunk; ``extra`` holds the optional keys (page, section, hybrid scores)."""
    unknown = set(extra) - set(_OPTIONAL)
    if unknown:
        raise TypeError(f"unknown chunk metadata keys: {', '.join(sorted(unknown))}")
    meta: dict[str, Any] = {
        "source": source,
        "doc_id": doc_id,
        "chapter": chapter,
        "chapter_title": chapter_title,
        "start": int(start),
        "end": int(end),
        "chunk_id": int(chunk_id),
        "score": float(score),
    }
    meta.update({key: value for key, value in extra.items() if value is not None or key in ("page", "page_end", "section")})
    return meta  # type: ignore[return-value]


def parse_chunk_metadata(metadata: Mapping[str, Any]) -> ChunkMetadata:
    """``metadata`` checked against the contract (extra keys are dropped); KnowledgeBaseError
    naming the key otherwise."""
    from kb.errors import KnowledgeBaseError

    out: dict[str, Any] = {}
    for key, types in _REQUIRED.items():
        if key not in metadata:
            raise KnowledgeBaseError(f"chunk metadata lacks {key!r}; it is not a glmkb knowledge-base chunk")
        out[key] = _checked(key, metadata[key], types)
    for key, types in _OPTIONAL.items():
        if key in metadata:
            out[key] = _checked(key, metadata[key], types)
    out["score"] = float(out["score"])
    return out  # type: ignore[return-value]


def _checked(key: str, value: Any, types: tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, types):
        from kb.errors import KnowledgeBaseError

        raise KnowledgeBaseError(f"chunk metadata {key!r} is {type(value).__name__}, not {'/'.join(t.__name__ for t in types)}")
    return value


__all__ = ["RETRIEVAL_MODES", "ChunkMetadata", "RetrievalMode", "check_mode", "chunk_metadata", "parse_chunk_metadata"]
