"""Searching one loaded version: dense, BM25, their reciprocal-rank fusion, and reranking.

Stateless functions over a :class:`kb.version.LoadedVersion`; the knowledge base supplies the
query embedder and the cross-encoder (both loaded lazily, shared across versions). A question that
names chapters ("第三回讲了什么？", "第3至5回里曹操做了什么") is answered from those chapters' chunks only,
where the knowledge base has them (``chapter_chunk_ids``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.documents import Document

from kb.chapter_references import chapters_named
from kb.docstore import StoredChunk
from kb.errors import EmbeddingModelError, KnowledgeBaseError
from kb.fusion import reciprocal_rank_fusion
from kb.tokenizing import folding, tokenize, well_formed
from kb.types import RetrievalMode, chunk_metadata
from kb.version import LoadedVersion

CANDIDATE_DEPTH = 50
"""How many candidates each retriever contributes to fusion / reranking."""

CHAPTER_DEPTH = 4096
"""Candidates each retriever fetches when a question names chapters, of which those chapters' are kept."""

TIE_FETCH_LIMIT = 4096
"""At most this many nearest vectors are fetched to settle a tie at the cut (Milvus allows 16384)."""

Hits = list[tuple[int, float]]


@dataclass(frozen=True)
class Query:
    """One search: the text and the options (already defaulted by the knowledge base)."""

    text: str
    mode: RetrievalMode
    k: int
    threshold: float | None
    rerank: bool

    def __post_init__(self) -> None:
        """One-line errors for a query that is not text and a ``k`` that is not a whole number (they
        reached numpy or jieba as tracebacks: "Partition index must be integer"); lone surrogates
        (undecodable bytes of a command-line argument) become U+FFFD for every retriever."""
        if not isinstance(self.text, str):
            raise KnowledgeBaseError(f"the query must be text (got {type(self.text).__name__})")
        object.__setattr__(self, "text", well_formed(self.text))
        try:
            object.__setattr__(self, "k", operator.index(self.k))
        except TypeError:
            raise KnowledgeBaseError(f"k must be a whole number (got {self.k!r})") from None

    @property
    def depth(self) -> int:
        """Candidates to fetch per retriever: more when fusing or reranking."""
        return max(CANDIDATE_DEPTH, 4 * self.k) if (self.mode == "hybrid" or self.rerank) else self.k


def search_version(
    version: LoadedVersion,
    query: Query,
    *,
    kb_name: str,
    embed_query: Callable[[str], Any],
    cross_encoder: Callable[[], Any],
) -> list[Document]:
    """The ``query.k`` best chunks of ``version`` as Documents (metadata per ``kb.types.ChunkMetadata``)."""
    mode = effective_mode(query.mode, keyword_only=version.manifest.keyword_only, kb_name=kb_name)
    narrow = chapter_chunk_ids(version, query.text)
    depth = query.depth if narrow is None else max(query.depth, CHAPTER_DEPTH)
    keep = (lambda hits: hits) if narrow is None else (lambda hits: [h for h in hits if h[0] in narrow])
    extra: dict[int, dict[str, float]] = {}
    if mode == "dense":
        hits = keep(dense_hits(version, query.text, depth, embed_query=embed_query, kb_name=kb_name))
    elif mode == "bm25":
        hits = keep(bm25_hits(version, query.text, depth))
    else:
        dense = keep(dense_hits(version, query.text, depth, embed_query=embed_query, kb_name=kb_name))
        sparse = keep(bm25_hits(version, query.text, depth))
        hits, extra = fuse(dense, sparse)
    if narrow is not None:
        hits = filled_from_chapters(hits, narrow, want=max(query.depth, query.k))
    if query.threshold is not None:
        hits = [(i, s) for i, s in hits if s >= query.threshold]
    hits = hits[: max(query.depth, query.k)] if query.rerank else hits[: query.k]
    chunks = version.docstore.chunks(i for i, _ in hits)
    docs = [to_document(chunks[i], s, mode=mode, **extra.get(i, {})) for i, s in hits if i in chunks]
    if query.rerank:
        docs = rerank(query.text, docs, cross_encoder())[: query.k]
    return docs


def chapter_chunk_ids(version: LoadedVersion, text: str) -> dict[int, None] | None:
    """The chunks of the chapters ``text`` names (``kb.chapter_references.chapters_named``: "第三回讲了什么？"), in
    reading order, or None: it names none, or none of the knowledge base's chapters (then it is searched
    whole: "第200回" of a 120-回 book may be about something else)."""
    named = chapters_named(text)
    if named is None:
        return None
    ids = version.docstore.chunk_ids_in_chapters(*named)
    return dict.fromkeys(ids) if ids else None


def filled_from_chapters(hits: Hits, chapter_ids: dict[int, None], *, want: int) -> Hits:
    """``hits`` (all inside the named chapters), then the chapters' other chunks in reading order with
    score 0 up to ``want``: "第三回讲了什么" shares few words with the chapter, whose text is the answer."""
    if len(hits) >= want:
        return hits
    seen = {i for i, _ in hits}
    rest = [(i, 0.0) for i in chapter_ids if i not in seen]
    return hits + rest[: want - len(hits)]


def effective_mode(mode: RetrievalMode, *, keyword_only: bool, kb_name: str) -> RetrievalMode:
    """``mode``, except that a keyword-only knowledge base answers hybrid with bm25 and refuses dense."""
    if not keyword_only:
        return mode
    if mode == "dense":
        raise KnowledgeBaseError(
            f"knowledge base {kb_name!r} is keyword-only (built with --embedding none); "
            "use --mode bm25, or add vectors with `ingest build --embedding MODEL`"
        )
    return "bm25"


def dense_hits(
    version: LoadedVersion, text: str, depth: int, *, embed_query: Callable[[str], Any], kb_name: str
) -> Hits:
    """Nearest chunks by cosine similarity of the embedded query."""
    index = version.dense
    if index is None or len(index) == 0:
        return []
    index.check()
    vector = np.asarray(embed_query(text), dtype=np.float32)
    if vector.shape[0] != index.dimension:
        raise EmbeddingModelError(
            f"the embedding model gives {vector.shape[0]}-dimensional vectors but knowledge base "
            f"{kb_name!r} holds {index.dimension}-dimensional ones; use the model it was built with"
        )
    return nearest_settled(lambda n: index.search(vector, n), min(depth, len(index)), len(index))


def nearest_settled(search: Callable[[int], Hits], depth: int, total: int) -> Hits:
    """The ``depth`` best of ``search(n)`` (best first, of ``total``), ties in chunk-id order.

    A vector index keeps an arbitrary member of a tie at its cut and orders ties as it likes, so
    two copies of a text came back as k=1 -> the second copy, k=3 -> second copy third. Fetching
    on while the last hit ties the depth-th (up to ``TIE_FETCH_LIMIT``) makes the cut stable.
    """
    if depth <= 0:
        return []
    n = min(depth + 1, total)  # one more than needed tells whether the cut falls inside a tie
    while True:
        hits = search(n)
        if len(hits) < n or n >= min(total, TIE_FETCH_LIMIT) or hits[-1][1] != hits[depth - 1][1]:
            break
        n = min(2 * n, total, TIE_FETCH_LIMIT)
    return sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:depth]


def bm25_hits(version: LoadedVersion, text: str, depth: int) -> Hits:
    """Best chunks by BM25 over jieba tokens."""
    return version.bm25.search(tokenize(text, **folding(version.manifest.bm25)), depth)


def fuse(dense: Hits, sparse: Hits) -> tuple[Hits, dict[int, dict[str, float]]]:
    """Reciprocal-rank fusion of the two rankings, and each hit's own scores."""
    extra: dict[int, dict[str, float]] = {}
    for key, ranked in (("dense_score", dense), ("bm25_score", sparse)):
        for chunk_id, score in ranked:
            extra.setdefault(chunk_id, {})[key] = score
    return reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in sparse]]), extra


def rerank(text: str, docs: list[Document], cross_encoder: Any) -> list[Document]:
    """``docs`` reordered by the cross-encoder; its score replaces ``score`` (the old one is kept
    as ``retrieval_score``)."""
    if not docs:
        return docs
    scores = cross_encoder.predict([(text, d.page_content) for d in docs], show_progress_bar=False)
    for doc, score in zip(docs, scores, strict=True):
        doc.metadata["retrieval_score"] = doc.metadata["score"]
        doc.metadata["score"] = float(score)
    return sorted(docs, key=lambda d: -d.metadata["score"])


def to_document(chunk: StoredChunk, score: float, **extra: Any) -> Document:
    """A stored chunk as a LangChain Document with the chunk-metadata contract."""
    return Document(
        page_content=chunk.text,
        metadata=dict(
            chunk_metadata(
                source=chunk.source,
                doc_id=chunk.doc_id,
                chapter=chunk.chapter,
                chapter_title=chunk.chapter_title,
                start=chunk.start,
                end=chunk.end,
                chunk_id=chunk.chunk_id,
                score=score,
                page=chunk.page,
                page_end=chunk.page_end,
                section=chunk.section,
                **extra,
            )
        ),
    )


__all__ = [
    "CANDIDATE_DEPTH", "CHAPTER_DEPTH", "Query", "chapter_chunk_ids", "filled_from_chapters", "bm25_hits", "dense_hits", "fuse", "nearest_settled", "rerank", "search_version",
    "to_document",
]
