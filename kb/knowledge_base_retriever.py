"""LangChain retriever over a glmkb knowledge base (dense, BM25 or hybrid)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict

from kb.types import RetrievalMode


class KnowledgeBaseRetriever(BaseRetriever):
    """Returns a knowledge base's best chunks for a query; None options use the knowledge
    base's defaults (from settings' ``retrieval`` section). ``invoke(q, k=1, mode="bm25")``
    overrides ``k``/``mode`` for one call (LangChain's ``test_invoke_with_k_kwarg``), and so
    does ``ainvoke``."""

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

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        mode: RetrievalMode | None = None,
    ) -> list[Document]:
        """The sync search in an executor, with the per-call ``k``/``mode``: LangChain's default
        passes neither, so ``ainvoke(q, k=3)`` raised TypeError."""
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), k=k, mode=mode
        )
