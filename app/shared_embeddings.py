"""``SharedEmbeddings``: one loaded embedding model shared by every knowledge base that uses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    from app.state import AppState


class SharedEmbeddings(Embeddings):
    """Hands a knowledge base the ``AppState``'s shared embedding model, loading it on first use.

    Opening a knowledge base (to list its documents, or to search it by keywords) therefore
    never loads a model, and all knowledge bases built with one model share one copy.
    """

    def __init__(self, *, state: AppState, model: str) -> None:
        self.state = state
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.state.embeddings_for(self.model).embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.state.embeddings_for(self.model).embed_query(text)
