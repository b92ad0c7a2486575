"""``Services``: the one object every front end shares (settings, the chat model, knowledge bases,
embedding models), so ``glmkb serve`` loads one model for the web UI and the API. Thread-safe and
shared between users; nothing per user is kept. Failures are ``app.errors`` kinds (``UserError``
400, ``Missing`` 404, ``NotReady`` 503) that each front end translates at its edge.

It composes one part per responsibility and keeps the names every caller uses:
``app.llm_loader.LLMLoader`` (the chat model), ``app.embedding_models.EmbeddingModels``,
``app.knowledge_bases.KnowledgeBases`` and ``app.uploads``; here are search modes and the chains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, BaseLanguageModel

from app import uploads
from app.embedding_models import EmbeddingModels
from app.errors import EmbeddingUnavailable, NotReady, UserError
from app.knowledge_bases import KnowledgeBases, check_kb_name, doc_label
from app.llm_loader import LLMFactory, LLMLoader, LLMStatus
from app.shared_embeddings import SharedEmbeddings
from app.warm_up import warm_up_llm
from chains import KnowledgeBaseQAChain
from chains.events import Event
from chains.summarize import documents_from_file, documents_from_kb, stream_summary
from llm.reasoning import with_thinking
from configs import Settings
from kb import BuildReport, DocumentInfo, KnowledgeBase

__all__ = ["LLMStatus", "Services", "SharedEmbeddings", "doc_label"]


class Services:
    """Shared, thread-safe services behind the web UI and the API (see the module docstring)."""

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
        """The key API clients must send (``app.auth.resolve_api_key``); None: no key."""
        self.llm_loader = LLMLoader(settings, llm=llm, factory=llm_factory)
        self.embedding_models = EmbeddingModels(settings)
        self.knowledge_bases = KnowledgeBases(settings, self.embedding_models)

    @classmethod
    def from_settings(cls, settings: Settings, *, api_key: str | None = None) -> Services:
        """The production services: the chat model comes from ``settings.llm`` on first use."""
        from llm.factory import llm_configured, load_llm

        factory = (lambda: load_llm(settings)) if llm_configured(settings) else None
        services = cls(settings, llm_factory=factory, api_key=api_key)
        services.check_embedding_setting()
        return services

    @property
    def model_id(self) -> str:
        """The chat model's id for API clients (``api.served_model_name``)."""
        return self.settings.api.served_model_name

    # -- chat model (app.llm_loader) --------------------------------------------------------

    @property
    def _llm(self) -> BaseLanguageModel | None:
        """The loaded chat model; tests set it to swap models."""
        return self.llm_loader.loaded

    @_llm.setter
    def _llm(self, llm: BaseLanguageModel | None) -> None:
        self.llm_loader.loaded = llm

    @property
    def has_llm(self) -> bool:
        """Whether a chat model is (or will be) available; False when none is configured."""
        return self.llm_loader.has_llm

    def get_llm(self) -> BaseLanguageModel | None:
        """The shared chat model, loaded on first call (other callers wait); None if unavailable."""
        return self.llm_loader.get_llm()

    def require_llm(self) -> BaseLanguageModel:
        """The shared chat model, or ``NotReady`` saying why there is none and how to configure one."""
        return self.llm_loader.require_llm()

    def require_chat_model(self) -> BaseChatModel:
        """The shared model's chat face (``LLMLoader.require_chat_model``), or ``NotReady``."""
        return self.llm_loader.require_chat_model()

    def warm_up(self) -> None:
        """Load the chat model now (a background thread at server start), then compile its fast path for
        first questions (``app.warm_up``, ``llm.warm_up``); errors are kept (loading) or logged (warming)."""
        llm = self.get_llm()
        if llm is not None:
            warm_up_llm(llm, self.settings)

    def llm_status(self) -> LLMStatus:
        """Where the chat model stands, for the web UI's banner."""
        return self.llm_loader.status()

    # -- embedding models (app.embedding_models) ------------------------------------------

    @property
    def _embeddings(self) -> dict[str, Embeddings]:
        """The loaded embedding models by identity (tests count them)."""
        return self.embedding_models.loaded

    def check_embedding_setting(self) -> None:
        """Record at start-up whether ``embedding.model`` can be found locally (cheap, no load)."""
        self.embedding_models.check_setting()

    def embeddings_for(self, model: str) -> Embeddings:
        """The shared embedding model ``model`` (loaded once, under a lock); ``EmbeddingUnavailable``."""
        return self.embedding_models.embeddings_for(model)

    def embedding_problems(self) -> list[str]:
        """Why embedding models could not be used (one line each; empty when all load)."""
        return self.embedding_models.problems()

    def embedding_model_names(self) -> list[str]:
        """Names a request may give for the configured embedding model (empty when none or
        when it is known not to load, so ``/v1/models`` lists only what loads)."""
        return self.embedding_models.model_names()

    def configured_embeddings(self, requested: str | None) -> tuple[str, Embeddings]:
        """``(model id, embeddings)`` for ``/v1/embeddings``: 503 when none, 404 for another model."""
        return self.embedding_models.configured(requested)

    def search_mode(self, kb: KnowledgeBase, mode: str | None, *, fallback: bool) -> tuple[str, UserError | None]:
        """The search mode to use on ``kb`` and, with ``fallback``, a note when it is not ``mode``.

        Keyword-only KBs are searched by keywords (dense is refused unless ``fallback``); when
        the KB's embedding model cannot be loaded, ``fallback`` searches by keywords with a note,
        otherwise ``EmbeddingUnavailable`` (503) is raised.
        """
        mode = mode or self.settings.retrieval.mode
        if kb.keyword_only:
            if mode == "dense" and not fallback:
                raise UserError(
                    f"知识库 {kb.name} 只支持关键词检索",
                    f"knowledge base {kb.name!r} is keyword-only (built without an embedding model); "
                    "use mode bm25 or hybrid",
                    param="mode",
                )
            return "bm25", None
        if mode == "bm25":
            return mode, None
        try:
            self.embeddings_for(kb.embedding_model)
        except EmbeddingUnavailable as e:
            if not fallback:
                raise
            return "bm25", UserError(
                "向量模型不可用，已改用关键词检索 (bm25)",
                f"embedding model unavailable, searched by keywords (bm25) instead: {e.en}",
            )
        return mode, None

    def usable_mode(self, kb_name: str, mode: str | None) -> tuple[str, UserError | None]:
        """``search_mode`` for the web UI: never refuses, falls back to keywords with a note."""
        return self.search_mode(self.kb(kb_name), mode, fallback=True)

    # -- knowledge bases (app.knowledge_bases) --------------------------------------------

    def list_kbs(self) -> list[str]:
        """Built knowledge bases under kb_root plus ones created here and not yet built."""
        return self.knowledge_bases.list_kbs()

    def create_kb(self, name: str | None, *, embedding_model: str | None = None) -> str:
        """Create knowledge base ``name`` on disk now, empty, built later with ``embedding_model``
        ("none" = keyword-only; None = ``embedding.model``); ``KnowledgeBases.create_kb``."""
        return self.knowledge_bases.create_kb(name, embedding_model=embedding_model)

    def kb(self, name: str | None) -> KnowledgeBase:
        """The shared ``KnowledgeBase`` ``name`` (opened once; it reloads new builds; one dropped
        since is ``Missing``, one dropped and built again is opened afresh)."""
        return self.knowledge_bases.kb(name)

    open_kb = kb

    def list_documents(self, name: str | None) -> list[DocumentInfo]:
        """The documents of a knowledge base (none for one created but not built yet)."""
        return self.kb(name).list_documents()

    def kb_summary(self, name: str) -> dict[str, Any]:
        """Counts and how a knowledge base was built (``error`` when it cannot be read)."""
        return self.knowledge_bases.summary(name)

    def add_files(self, name: str | None, paths: Sequence[Path]) -> BuildReport:
        """Decode and add uploaded files, recorded under their file names (re-uploads replace);
        progress goes through tqdm, which the page's ``gr.Progress(track_tqdm=True)`` shows."""
        return self.knowledge_bases.add_files(name, paths)

    def remove_document(self, name: str | None, doc_id: str) -> str:
        """Remove one document; returns its label for the status line."""
        return self.knowledge_bases.remove_document(name, doc_id)

    def drop_kb(self, name: str | None) -> None:
        """Delete a knowledge base and its folder, damaged or not (it is never opened for this)."""
        self.knowledge_bases.drop_kb(name)

    # -- chains ---------------------------------------------------------------------------

    def ask(
        self,
        kb_name: str,
        question: str,
        *,
        history: Sequence[Any],
        mode: str,
        top_k: int | None,
        llm: BaseLanguageModel | None = None,
        callbacks: Any = None,
        enable_thinking: bool | None = None,
        **chain_fields: Any,
    ) -> Iterator[Event]:
        """Stream one answer: ``Sources``, ``Token`` pieces, ``Answer`` (passages if no LLM).

        ``llm`` replaces the shared model for this answer (the API passes a copy carrying the
        request's sampling options); ``enable_thinking`` (None: the model's own setting) switches a
        reasoning model's thinking for this answer; ``chain_fields`` go to ``KnowledgeBaseQAChain``.
        """
        kb = self.kb(kb_name)
        retriever = kb.as_retriever(mode=mode, k=top_k)  # type: ignore[arg-type]
        model = with_thinking(llm if llm is not None else self.get_llm(), enable_thinking)
        chain = KnowledgeBaseQAChain.from_settings(retriever, model, self.settings, **chain_fields)
        return chain.stream_answer(question, history=list(history), callbacks=callbacks)

    def summarize_document(self, kb_name: str, doc_id: str, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of a knowledge-base document (optionally a chapter range)."""
        docs = documents_from_kb(self.kb(kb_name), doc_id, chapters=chapters)
        return self._summary(docs)

    def summarize_file(self, path: Path, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of an uploaded file, any format a knowledge base reads (optionally a
        chapter range)."""
        return self._summary(documents_from_file(path, chapters=chapters))

    def _summary(self, docs: list[Document]) -> Iterator[Event]:
        llm = self.get_llm()
        if llm is None:
            raise NotReady(
                "总结需要大模型，请先配置 llm.model_path",
                "summaries need a chat model: set llm.model_path (GLMKB_LLM__MODEL_PATH)",
                code="model_not_loaded",
            )
        return stream_summary(docs, llm=llm, max_input_tokens=self.settings.llm.max_input_tokens)

    # -- validation (app.knowledge_bases, app.uploads) ------------------------------------

    check_kb_name = staticmethod(check_kb_name)

    def upload_types(self, *, archives: bool = False) -> list[str]:
        """The upload suffixes the page accepts (``app.uploads.upload_types``; ``archives``: ZIP,
        tar, 7z and RAR archives too, for a build)."""
        return uploads.upload_types(self.settings, archives=archives)

    def check_upload(self, path: str | Path, *, archives: bool = False) -> Path:
        """An uploaded file of an allowed type and size, or a UserError naming the limit."""
        return uploads.check_upload(self.settings, path, archives=archives)
