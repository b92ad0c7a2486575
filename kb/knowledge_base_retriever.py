"""LangChain retriever over a glmkb knowledge base (dense, BM25 or hybrid)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from kb.types import RetrievalMode


class KnowledgeBaseRetriever(BaseRetriever):
    """Returns a knowledge base's best chunks for a query; None options use the knowledge
    base's defaults (from settings' ``retrieval`` section). ``invoke(q, k=1, mode="bm25")``
    overrides ``k``/``mode`` for one call (LangChain's ``test_invoke_with_k_kwarg``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    knowledge_base: Any
    """The ``kb.KnowledgeBase`` to search."""
    mode: RetrievalMode | None = None
    k: int | None = None
    score_threshold: float | None = None
    rerank: bool | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: RetrievalMode | None = None,
    ) -> list[Document]:
        return self.knowledge_base.search(
            query,
            mode=mode or self.mode,
            k=self.k if k is None else k,
            score_threshold=self.score_threshold,
            rerank=self.rerank,
        )
