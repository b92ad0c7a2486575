"""glmkb knowledge bases: Chinese document loading and chapter-aware chunking, BM25 plus dense
vectors in FAISS or Milvus, storage without pickle, dense/BM25/hybrid retrieval as a LangChain
retriever.

Names are imported on first use (PEP 562): ``configs`` imports ``kb.types`` for the retrieval
mode, which must not pull in FAISS, torch and LangChain (nor import ``configs`` back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BuildReport": "kb.build_report",
    "Chapter": "kb.splitting",
    "ChapterScanner": "kb.splitting",
    "ChunkMetadata": "kb.types",
    "Chunk": "kb.splitting",
    "DamagedKnowledgeBaseError": "kb.errors",
    "DenseIndex": "kb.dense_store",
    "DenseStore": "kb.dense_store",
    "DocumentInfo": "kb.docstore",
    "DocumentLoadError": "kb.errors",
    "EmbeddingModelError": "kb.errors",
    "EvalResult": "kb.evaluation",
    "FaissStore": "kb.faiss_store",
    "KnowledgeBase": "kb.knowledge_base",
    "KnowledgeBaseError": "kb.errors",
    "KnowledgeBaseNotFound": "kb.errors",
    "KnowledgeBaseRetriever": "kb.knowledge_base_retriever",
    "KBSummary": "kb.lifecycle",
    "LoadedDocument": "kb.loaders",
    "MilvusStore": "kb.milvus_store",
    "QAItem": "kb.evaluation",
    "RETRIEVAL_MODES": "kb.types",
    "RetrievalMode": "kb.types",
    "SUPPORTED_SUFFIXES": "kb.loaders",
    "TextFile": "kb.loading",
    "chinese_number": "kb.splitting",
    "chunk_metadata": "kb.types",
    "decode_bytes": "kb.loading",
    "evaluate": "kb.evaluation",
    "iter_chunks": "kb.splitting",
    "load_qa": "kb.evaluation",
    "load_text": "kb.loading",
    "open_document": "kb.loaders",
    "open_text_file": "kb.loading",
    "parse_chunk_metadata": "kb.types",
    "reciprocal_rank_fusion": "kb.fusion",
    "source_label": "kb.citation",
    "split_chapters": "kb.splitting",
    "split_document": "kb.splitting",
    "tokenize": "kb.tokenizing",
    "validate_kb_name": "kb.names",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from kb.build_report import BuildReport
    from kb.dense_store import DenseIndex, DenseStore
    from kb.docstore import DocumentInfo
    from kb.errors import (
        DamagedKnowledgeBaseError,
        DocumentLoadError,
        EmbeddingModelError,
        KnowledgeBaseError,
        KnowledgeBaseNotFound,
    )
    from kb.evaluation import EvalResult, QAItem, evaluate, load_qa
    from kb.faiss_store import FaissStore
    from kb.fusion import reciprocal_rank_fusion
    from kb.knowledge_base import KnowledgeBase
    from kb.knowledge_base_retriever import KnowledgeBaseRetriever
    from kb.citation import source_label
    from kb.lifecycle import KBSummary
    from kb.loaders import SUPPORTED_SUFFIXES, LoadedDocument, open_document
    from kb.loading import TextFile, decode_bytes, load_text, open_text_file
    from kb.milvus_store import MilvusStore
    from kb.names import validate_kb_name
    from kb.splitting import Chapter, ChapterScanner, Chunk, chinese_number, iter_chunks, split_chapters, split_document
    from kb.tokenizing import tokenize
    from kb.types import RETRIEVAL_MODES, ChunkMetadata, RetrievalMode, chunk_metadata, parse_chunk_metadata
