"""``SharedEmbeddings``: the ``Embeddings`` a knowledge base opened by ``Services`` is given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from langchain_core.embeddings import Embeddings

__all__ = ["EmbeddingSource", "SharedEmbeddings"]


class EmbeddingSource(Protocol):
    """Where the shared embedding models come from (``Services`` or its ``EmbeddingModels``)."""

    def embeddings_for(self, model: str) -> Embeddings: ...


class SharedEmbeddings(Embeddings):
    """Hands a knowledge base the shared embedding model, loading it on first use.

    ``model`` is read on every call, so a knowledge base dropped and rebuilt with another
    model by another process is embedded with its new model (issue 20 #9: the server kept the
    model of the first open, and dense top-3 scores fell from ~0.95 to ~0.14).
    """

    def __init__(self, services: EmbeddingSource, model: Callable[[], str]) -> None:
        self.services = services
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.services.embeddings_for(self.model()).embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.services.embeddings_for(self.model()).embed_query(text)
