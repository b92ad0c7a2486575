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
from kb.loading import decode_bytes, load_text
from kb.milvus_store import MilvusStore
from kb.names import validate_kb_name
from kb.splitting import Chapter, Chunk, chinese_number, split_chapters, split_document
from kb.tokenizing import tokenize

__all__ = [
    "BuildReport",
    "Chapter",
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
    "MilvusStore",
    "QAItem",
    "chinese_number",
    "decode_bytes",
    "evaluate",
    "load_qa",
    "load_text",
    "reciprocal_rank_fusion",
    "split_chapters",
    "split_document",
    "tokenize",
    "validate_kb_name",
]
