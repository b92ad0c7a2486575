"""glmkb knowledge bases: Chinese document loading and chapter-aware chunking, BM25 plus dense
vectors in FAISS or Milvus, storage without pickle, dense/BM25/hybrid retrieval as a LangChain
retriever."""

from kb.dense_store import DenseIndex, DenseStore
from kb.docstore import DocumentInfo
from kb.errors import DocumentLoadError, EmbeddingModelError, KnowledgeBaseError
from kb.evaluation import EvalResult, QAItem, evaluate, load_qa
from kb.faiss_store import FaissStore
from kb.fusion import reciprocal_rank_fusion
from kb.knowledge_base import BuildReport, KnowledgeBase
from kb.knowledge_base_retriever import KnowledgeBaseRetriever
from kb.citation import source_label
from kb.loaders import SUPPORTED_SUFFIXES, LoadedDocument, open_document
from kb.loading import TextFile, decode_bytes, load_text, open_text_file
from kb.milvus_store import MilvusStore
from kb.names import validate_kb_name
from kb.splitting import (
    Chapter,
    ChapterScanner,
    Chunk,
    chinese_number,
    iter_chunks,
    split_chapters,
    split_document,
)
from kb.tokenizing import tokenize

__all__ = [
    "BuildReport",
    "Chapter",
    "ChapterScanner",
    "Chunk",
    "DenseIndex",
    "DenseStore",
    "DocumentInfo",
    "DocumentLoadError",
    "EmbeddingModelError",
    "EvalResult",
    "FaissStore",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseRetriever",
    "LoadedDocument",
    "MilvusStore",
    "QAItem",
    "SUPPORTED_SUFFIXES",
    "TextFile",
    "chinese_number",
    "decode_bytes",
    "evaluate",
    "iter_chunks",
    "load_qa",
    "load_text",
    "open_document",
    "open_text_file",
    "reciprocal_rank_fusion",
    "source_label",
    "split_chapters",
    "split_document",
    "tokenize",
    "validate_kb_name",
]
