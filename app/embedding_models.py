"""``EmbeddingModels``: the process's embedding models, each loaded once under a lock; a model
that cannot be found or loaded is remembered with its one-line reason (``EmbeddingUnavailable``)."""

from __future__ import annotations

import threading

from langchain_core.embeddings import Embeddings

from app.errors import EmbeddingUnavailable, Missing, NotReady, one_line
from configs import Settings
from kb import EmbeddingModelError
from kb.embedding import is_keyword_only, load_embeddings, locate_model, model_identity

__all__ = ["NO_EMBEDDING_HOWTO", "EmbeddingModels"]

NO_EMBEDDING_HOWTO = (
    "no embedding model is configured (embedding.model is 'none'): start the server with "
    "--embedding NAME_OR_DIR (or GLMKB_EMBEDDING__MODEL) to serve /v1/embeddings"
)


class EmbeddingModels:
    """The shared embedding models by identity (``kb.embedding.model_identity``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loaded: dict[str, Embeddings] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def check_setting(self) -> None:
        """Record at start-up whether ``embedding.model`` can be found locally (cheap, no load)."""
        model = self.settings.embedding.model
        if is_keyword_only(model):
            return
        try:
            locate_model(model)
        except EmbeddingModelError as e:
            self.errors[model_identity(model)] = one_line(e)

    def embeddings_for(self, model: str) -> Embeddings:
        """The shared embedding model ``model`` (loaded once, under a lock); ``EmbeddingUnavailable``."""
        key = model_identity(model)
        with self._lock:
            if key in self.errors:
                raise unavailable(self.errors[key])
            if key not in self.loaded:
                emb = self.settings.embedding
                try:
                    self.loaded[key] = load_embeddings(model, device=emb.device, batch_size=emb.batch_size)
                except EmbeddingModelError as e:
                    self.errors[key] = one_line(e)
                    raise unavailable(one_line(e)) from e
            return self.loaded[key]

    def problems(self) -> list[str]:
        """Why embedding models could not be used (one line each; empty when all load)."""
        return list(self.errors.values())

    def model_names(self) -> list[str]:
        """Names a request may give for the configured embedding model (empty when none or
        when it is known not to load, so ``/v1/models`` lists only what loads)."""
        model = self.settings.embedding.model
        if is_keyword_only(model) or model_identity(model) in self.errors:
            return []
        names = [model.strip(), model_identity(model)]
        names.append(names[-1].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
        return list(dict.fromkeys(names))

    def configured(self, requested: str | None) -> tuple[str, Embeddings]:
        """``(model id, embeddings)`` for ``/v1/embeddings``: 503 when none, 404 for another model."""
        model = self.settings.embedding.model
        if is_keyword_only(model):
            raise NotReady("未配置向量模型", NO_EMBEDDING_HOWTO, code="embedding_unavailable")
        embedder = self.embeddings_for(model)
        names = self.model_names()
        if requested and requested not in names:
            raise Missing(
                f"没有向量模型 {requested}",
                f"embedding model {requested!r} is not served here; use {names[0]!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return names[0], embedder


def unavailable(reason: str) -> EmbeddingUnavailable:
    """The 503 for an embedding model that cannot be used, naming why."""
    return EmbeddingUnavailable("向量模型不可用", reason, code="embedding_unavailable")
