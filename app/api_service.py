"""``APIService``: what the API server shares between requests — settings, the chat model
(loaded once, thread-safe), knowledge bases (opened once per name) and embedding models.

Independent of the Gradio UI (importing it loads no gradio). Failures a client can act on
are ``APIError``s carrying the HTTP status and OpenAI's error fields.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseLanguageModel

from app.common import AuthConfigError, is_loopback
from configs import Settings
from configs.settings import APISettings
from kb import EmbeddingModelError, KnowledgeBase, KnowledgeBaseError, validate_kb_name
from kb.embedding import is_keyword_only, load_embeddings, model_identity
from llm.factory import llm_configured, load_llm

__all__ = ["APIError", "APIService", "AuthConfigError", "is_loopback", "resolve_api_key"]

log = logging.getLogger(__name__)

LLMFactory = Callable[[], BaseLanguageModel]
NO_LLM_HOWTO = (
    "no chat model is configured: start glmkb-api with --model-path DIR (or GLMKB_LLM__MODEL_PATH, or "
    "llm.model_path in the --config YAML), or set llm.backend: openai with llm.base_url and llm.model "
    "to use an OpenAI-compatible server; knowledge-base queries work without one"
)
NO_EMBEDDING_HOWTO = (
    "no embedding model is configured (embedding.model is 'none'): start glmkb-api with "
    "--embedding NAME_OR_DIR (or GLMKB_EMBEDDING__MODEL) to serve /v1/embeddings"
)


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def resolve_api_key(api: APISettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The key clients must send (from ``$api.api_key_env``), or None for no auth.

    Refuses (``AuthConfigError``) a non-loopback bind address without a key unless
    ``api.allow_no_auth`` says the exposure is intended.
    """
    environ = os.environ if environ is None else environ
    key = environ.get(api.api_key_env) or None
    if key is None and not is_loopback(api.host) and not api.allow_no_auth:
        raise AuthConfigError(
            f"refusing to serve on {api.host} without an API key: set the environment variable "
            f"{api.api_key_env} (api.api_key_env) to a secret that clients send as 'Authorization: "
            "Bearer KEY', or set api.allow_no_auth: true (--allow-no-auth) if anyone on the network "
            "may use it, or bind 127.0.0.1"
        )
    return key


class APIService:
    """Shared, thread-safe services behind the API (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: BaseLanguageModel | None = None,
        llm_factory: LLMFactory | None = None,
        api_key: str | None = None,
    ) -> None:
        self.settings = settings
        self.api_key = api_key
        self._llm = llm
        self._llm_factory = llm_factory
        self._llm_error: str | None = None
        self._llm_lock = threading.Lock()
        self._kbs: dict[str, KnowledgeBase] = {}
        self._kb_lock = threading.Lock()
        self._embeddings: dict[str, Embeddings] = {}
        self._embedding_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, api_key: str | None = None) -> APIService:
        """The production service: the chat model is ``llm.factory.load_llm(settings)``."""
        factory = (lambda: load_llm(settings)) if llm_configured(settings) else None
        return cls(settings, llm_factory=factory, api_key=api_key)

    @property
    def model_id(self) -> str:
        return self.settings.api.served_model_name

    # -- chat model ---------------------------------------------------------------------

    @property
    def has_llm(self) -> bool:
        """Whether a chat model is (or will be) available; False when none is configured."""
        return self._llm is not None or self._llm_factory is not None

    def get_llm(self) -> BaseLanguageModel:
        """The shared chat model, loaded on first call (others wait); 503 when there is none."""
        if self._llm is None and self._llm_error is None:
            with self._llm_lock:
                if self._llm is None and self._llm_error is None:
                    self._load_llm()
        if self._llm is None:
            raise APIError(503, self._llm_error or NO_LLM_HOWTO, type="server_error", code="model_not_loaded")
        return self._llm

    def _load_llm(self) -> None:
        if self._llm_factory is None:
            self._llm_error = NO_LLM_HOWTO
            return
        try:
            self._llm = self._llm_factory()
            log.info("chat model ready: %s", type(self._llm).__name__)
        except Exception as e:  # the server keeps serving retrieval; chat answers 503 with this
            log.exception("chat model failed to load")
            self._llm_error = f"the chat model failed to load: {' '.join(str(e).split())}"

    def warm_up(self) -> None:
        """Load the chat model now (a background thread at start-up); errors are kept for 503s."""
        try:
            self.get_llm()
        except APIError:
            pass

    # -- knowledge bases ----------------------------------------------------------------

    def kb_names(self) -> list[str]:
        return KnowledgeBase.list_names(self.settings.kb_root)

    def open_kb(self, name: str) -> KnowledgeBase:
        """The shared ``KnowledgeBase`` ``name``: 400 for a bad name, 404 when it does not exist."""
        try:
            name = validate_kb_name(name)
        except KnowledgeBaseError as e:
            raise APIError(400, str(e), param="name", code="invalid_kb_name") from e
        with self._kb_lock:
            if name not in self.kb_names():  # also when dropped since it was opened here
                self._kbs.pop(name, None)
                raise APIError(
                    404,
                    f"knowledge base {name!r} does not exist under {self.settings.kb_root}; "
                    "GET /v1/kb lists them, `ingest build` creates one",
                    param="name",
                    code="kb_not_found",
                )
            kb = self._kbs.get(name)
            if kb is None:
                kb = KnowledgeBase.from_settings(self.settings, name=name)
                if not kb.keyword_only:
                    kb.set_embeddings(SharedEmbeddings(self, kb.embedding_model))
                self._kbs[name] = kb
            return kb

    def kb_summary(self, name: str) -> dict[str, Any]:
        """One entry of ``GET /v1/kb``: counts and how the knowledge base was built."""
        try:
            kb = self.open_kb(name)
            docs = kb.list_documents()
        except (KnowledgeBaseError, OSError, ValueError, APIError) as e:
            log.warning("knowledge base %s could not be read: %s", name, e)
            return {"object": "knowledge_base", "name": name, "error": " ".join(str(e).split())}
        return {
            "object": "knowledge_base",
            "name": name,
            "documents": len(docs),
            "chunks": sum(d.chunks for d in docs),
            "embedding_model": kb.embedding_model,
            "keyword_only": kb.keyword_only,
            "chunk_size": kb.chunk_size,
            "chunk_overlap": kb.chunk_overlap,
        }

    def check_mode(self, kb: KnowledgeBase, mode: str | None) -> str:
        """The search mode to use; 400 for dense on a keyword-only KB, 503 when its model is missing."""
        mode = mode or self.settings.retrieval.mode
        if kb.keyword_only:
            if mode == "dense":
                raise APIError(
                    400,
                    f"knowledge base {kb.name!r} is keyword-only (built without an embedding model); "
                    "use mode bm25 or hybrid",
                    param="mode",
                )
            return "bm25"
        if mode != "bm25":
            self.embeddings_for(kb.embedding_model)
        return mode

    # -- embeddings ---------------------------------------------------------------------

    def embeddings_for(self, model: str) -> Embeddings:
        """The shared embedding model ``model`` (loaded once); 503 when it cannot be loaded."""
        key = model_identity(model)
        with self._embedding_lock:
            if key not in self._embeddings:
                emb = self.settings.embedding
                try:
                    self._embeddings[key] = load_embeddings(model, device=emb.device, batch_size=emb.batch_size)
                except EmbeddingModelError as e:
                    raise APIError(503, " ".join(str(e).split()), type="server_error", code="embedding_unavailable") from e
            return self._embeddings[key]

    def embedding_model_names(self) -> list[str]:
        """Names a request may give for the configured embedding model (empty when none)."""
        model = self.settings.embedding.model
        if is_keyword_only(model):
            return []
        names = [model.strip(), model_identity(model)]
        names.append(names[-1].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
        return list(dict.fromkeys(names))

    def configured_embeddings(self, requested: str | None) -> tuple[str, Embeddings]:
        """``(model id, embeddings)`` for ``/v1/embeddings``: 503 when none, 404 for another model."""
        names = self.embedding_model_names()
        if not names:
            raise APIError(503, NO_EMBEDDING_HOWTO, type="server_error", code="embedding_unavailable")
        if requested and requested not in names:
            raise APIError(
                404,
                f"embedding model {requested!r} is not served here; use {names[0]!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return names[0], self.embeddings_for(self.settings.embedding.model)


class SharedEmbeddings(Embeddings):
    """Hands a knowledge base the service's shared embedding model, loading it on first use."""

    def __init__(self, service: APIService, model: str) -> None:
        self.service = service
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.service.embeddings_for(self.model).embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.service.embeddings_for(self.model).embed_query(text)
