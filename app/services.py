"""``Services``: the one object every front end shares (settings, the chat model, knowledge bases,
embedding models), so ``glmkb serve`` loads one model for the web UI and the API. Thread-safe and
shared between users; nothing per user is kept. Failures are ``app.errors`` kinds (``UserError``
400, ``Missing`` 404, ``NotReady`` 503) that each front end translates at its edge.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, BaseLanguageModel

from app.errors import EmbeddingUnavailable, Missing, NotReady, UserError, one_line
from chains import KnowledgeBaseQAChain
from chains.events import Event
from chains.summarize import documents_from_file, documents_from_kb, stream_summary
from configs import Settings
from kb import BuildReport, DocumentInfo, EmbeddingModelError, KnowledgeBase, KnowledgeBaseError, validate_kb_name
from kb.embedding import is_keyword_only, load_embeddings, locate_model, model_identity
from kb.lifecycle import confusable_message
from kb.names import confusable_name

__all__ = ["LLMStatus", "Services", "SharedEmbeddings", "doc_label"]

log = logging.getLogger(__name__)

LLMFactory = Callable[[], BaseLanguageModel]

NO_LLM_REASON = "llm.model_path is not set (nor llm.backend: openai with llm.base_url)."
NO_LLM_HOWTO = (
    "no chat model is configured: start the server with --model-path DIR (or GLMKB_LLM__MODEL_PATH, or "
    "llm.model_path in the --config YAML), or set llm.backend: openai with llm.base_url and llm.model "
    "to use an OpenAI-compatible server; knowledge-base queries work without one"
)
NO_EMBEDDING_HOWTO = (
    "no embedding model is configured (embedding.model is 'none'): start the server with "
    "--embedding NAME_OR_DIR (or GLMKB_EMBEDDING__MODEL) to serve /v1/embeddings"
)


@dataclass(frozen=True)
class LLMStatus:
    """Where the chat model stands: loaded, loading, failed (``error``) or not configured."""

    loaded: bool
    loading: bool
    configured: bool
    error: str | None
    target: str


class SharedEmbeddings(Embeddings):
    """Hands a knowledge base the shared embedding model, loading it on first use.

    ``model`` is read on every call, so a knowledge base dropped and rebuilt with another
    model by another process is embedded with its new model (issue 20 #9: the server kept the
    model of the first open, and dense top-3 scores fell from ~0.95 to ~0.14).
    """

    def __init__(self, services: Services, model: Callable[[], str]) -> None:
        self.services = services
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.services.embeddings_for(self.model()).embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.services.embeddings_for(self.model()).embed_query(text)


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
        self._llm = llm
        self._llm_factory = llm_factory
        self._llm_error: str | None = None
        self._llm_loading = False
        self._llm_lock = threading.Lock()
        self._chat: BaseChatModel | None = None
        self._kbs: dict[str, KnowledgeBase] = {}
        self._pending: set[str] = set()
        self._pending_models: dict[str, str | None] = {}  # the embedding model chosen at creation
        self._kb_lock = threading.RLock()
        self._embeddings: dict[str, Embeddings] = {}
        self._embedding_errors: dict[str, str] = {}
        self._embedding_lock = threading.Lock()

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

    # -- chat model ---------------------------------------------------------------------

    @property
    def has_llm(self) -> bool:
        """Whether a chat model is (or will be) available; False when none is configured."""
        return self._llm is not None or (self._llm_factory is not None and self._llm_error is None)

    def get_llm(self) -> BaseLanguageModel | None:
        """The shared chat model, loaded on first call (other callers wait); None if unavailable."""
        if self._llm is None and self._llm_error is None:
            with self._llm_lock:
                if self._llm is None and self._llm_error is None:
                    self._load_llm()
        return self._llm

    def require_llm(self) -> BaseLanguageModel:
        """The shared chat model, or ``NotReady`` saying why there is none and how to configure one."""
        llm = self.get_llm()
        if llm is None:
            error = self._llm_error
            en = NO_LLM_HOWTO if error is None or error == NO_LLM_REASON else error
            raise NotReady("大模型不可用", en, code="model_not_loaded")
        return llm

    def require_chat_model(self) -> BaseChatModel:
        """The shared model's chat face, or ``NotReady`` like ``require_llm``: the model itself
        when it is a chat model (``llm.backend: openai``), else one ``ChatGLMChat`` over the
        loaded ``ChatGLM`` (same weights, worker and batching queue; made once)."""
        llm = self.require_llm()
        if isinstance(llm, BaseChatModel):
            return llm
        chat = self._chat
        if chat is None or getattr(chat, "llm", None) is not llm:
            from llm.chatglm import ChatGLM
            from llm.chatglm_chat import ChatGLMChat

            if not isinstance(llm, ChatGLM):
                en = f"a {type(llm).__name__} model has no chat face; configure a ChatGLM or a chat model"
                raise NotReady("大模型不支持对话", en, code="model_not_loaded")
            chat = self._chat = ChatGLMChat(llm=llm)
        return chat

    def _load_llm(self) -> None:
        if self._llm_factory is None:
            self._llm_error = NO_LLM_REASON
            return
        self._llm_loading = True
        try:
            self._llm = self._llm_factory()
            log.info("chat model ready: %s", type(self._llm).__name__)
        except Exception as e:  # the servers keep serving retrieval; the banner/503 says why
            log.exception("chat model failed to load")
            self._llm_error = f"the chat model failed to load: {one_line(e)}"
        finally:
            self._llm_loading = False

    def warm_up(self) -> None:
        """Load the chat model now (a background thread at server start); errors are kept."""
        self.get_llm()

    def llm_status(self) -> LLMStatus:
        """Where the chat model stands, for the web UI's banner."""
        target = self.settings.llm.model_path or self.settings.llm.base_url or ""
        error = self._llm_error
        if error is None and self._llm is None and self._llm_factory is None:
            error = NO_LLM_REASON
        return LLMStatus(
            loaded=self._llm is not None,
            loading=self._llm_loading,
            configured=self._llm is not None or self._llm_factory is not None,
            error=error,
            target=str(target),
        )

    # -- embedding models -----------------------------------------------------------------

    def check_embedding_setting(self) -> None:
        """Record at start-up whether ``embedding.model`` can be found locally (cheap, no load)."""
        model = self.settings.embedding.model
        if is_keyword_only(model):
            return
        try:
            locate_model(model)
        except EmbeddingModelError as e:
            self._embedding_errors[model_identity(model)] = one_line(e)

    def embeddings_for(self, model: str) -> Embeddings:
        """The shared embedding model ``model`` (loaded once, under a lock); ``EmbeddingUnavailable``."""
        key = model_identity(model)
        with self._embedding_lock:
            if key in self._embedding_errors:
                raise self._embedding_unavailable(self._embedding_errors[key])
            if key not in self._embeddings:
                emb = self.settings.embedding
                try:
                    self._embeddings[key] = load_embeddings(model, device=emb.device, batch_size=emb.batch_size)
                except EmbeddingModelError as e:
                    self._embedding_errors[key] = one_line(e)
                    raise self._embedding_unavailable(one_line(e)) from e
            return self._embeddings[key]

    @staticmethod
    def _embedding_unavailable(reason: str) -> EmbeddingUnavailable:
        return EmbeddingUnavailable("向量模型不可用", reason, code="embedding_unavailable")

    def embedding_problems(self) -> list[str]:
        """Why embedding models could not be used (one line each; empty when all load)."""
        return list(self._embedding_errors.values())

    def embedding_model_names(self) -> list[str]:
        """Names a request may give for the configured embedding model (empty when none or
        when it is known not to load, so ``/v1/models`` lists only what loads)."""
        model = self.settings.embedding.model
        if is_keyword_only(model) or model_identity(model) in self._embedding_errors:
            return []
        names = [model.strip(), model_identity(model)]
        names.append(names[-1].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
        return list(dict.fromkeys(names))

    def configured_embeddings(self, requested: str | None) -> tuple[str, Embeddings]:
        """``(model id, embeddings)`` for ``/v1/embeddings``: 503 when none, 404 for another model."""
        model = self.settings.embedding.model
        if is_keyword_only(model):
            raise NotReady("未配置向量模型", NO_EMBEDDING_HOWTO, code="embedding_unavailable")
        embedder = self.embeddings_for(model)
        names = self.embedding_model_names()
        if requested and requested not in names:
            raise Missing(
                f"没有向量模型 {requested}",
                f"embedding model {requested!r} is not served here; use {names[0]!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return names[0], embedder

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

    # -- knowledge bases ------------------------------------------------------------------

    def list_kbs(self) -> list[str]:
        """Built knowledge bases under kb_root plus ones created here and not yet built."""
        with self._kb_lock:
            built = set(KnowledgeBase.list_names(self.settings.kb_root))
            self._pending -= built
            return sorted(built | self._pending)

    def create_kb(self, name: str | None, *, embedding_model: str | None = None) -> str:
        """Create knowledge base ``name`` on disk now, empty, built later with ``embedding_model``
        ("none" = keyword-only; None = ``embedding.model``): ``ingest list``, ``GET /v1/kb`` and
        every other process see it at once (issue 18 #7: it used to live in memory until built)."""
        name = self.check_kb_name(name)
        with self._kb_lock:
            if name in KnowledgeBase.list_names(self.settings.kb_root) or name in self._pending:
                raise UserError(f"知识库 {name} 已存在", f"knowledge base {name!r} already exists")
            other = confusable_name(name, self.list_kbs())
            if other is not None:  # glmkb #20.16 (kb.lifecycle.check_new_name refuses it too)
                raise UserError(f"知识库名称 {name} 与已有的 {other} 看起来相同，请直接使用 {other} 或换一个名称",
                                confusable_message(name, other), param="name", code="kb_name_confusable")
            self._pending.add(name)  # reserved while it is written
            self._pending_models[name] = embedding_model
        try:
            kb = KnowledgeBase.from_settings(self.settings, name=name, create=True, embedding_model=embedding_model)
            kb.create()
            kb.set_embeddings(SharedEmbeddings(self, lambda kb=kb: kb.embedding_model))
            with self._kb_lock:
                self._kbs[name] = kb
        finally:
            with self._kb_lock:
                self._pending.discard(name)
                self._pending_models.pop(name, None)
        return name

    def kb(self, name: str | None) -> KnowledgeBase:
        """The shared ``KnowledgeBase`` ``name`` (opened once; it reloads new builds).

        One dropped since it was opened here (by any process) is forgotten and ``Missing``;
        one dropped and built again is opened afresh.
        """
        name = self.check_kb_name(name)
        with self._kb_lock:
            if name not in self.list_kbs():
                self._kbs.pop(name, None)
                raise Missing(
                    f"没有名为 {name} 的知识库，请先在“知识库管理”中创建",
                    f"knowledge base {name!r} does not exist: create it in the Manage tab first, or "
                    "with `ingest build` (GET /v1/kb lists them)",
                    param="name",
                    code="kb_not_found",
                )
            kb = self._kbs.get(name)
            if kb is None or not (kb.exists or name in self._pending):
                pending = name in self._pending
                model = self._pending_models.get(name) if pending else None
                kb = KnowledgeBase.from_settings(self.settings, name=name, create=pending, embedding_model=model)
                kb.set_embeddings(SharedEmbeddings(self, lambda kb=kb: kb.embedding_model))
                self._kbs[name] = kb
            return kb

    open_kb = kb

    def list_documents(self, name: str | None) -> list[DocumentInfo]:
        """The documents of a knowledge base (none for one created but not built yet)."""
        return self.kb(name).list_documents()

    def kb_summary(self, name: str) -> dict[str, Any]:
        """Counts and how a knowledge base was built (``error`` when it cannot be read)."""
        try:
            kb = self.kb(name)
            docs = kb.list_documents()
        except (KnowledgeBaseError, OSError, ValueError, NotReady) as e:
            log.warning("knowledge base %s could not be read: %s", name, e)
            return {"name": name, "error": one_line(e)}
        return {
            "name": name,
            "documents": len(docs),
            "chunks": sum(d.chunks for d in docs),
            "embedding_model": kb.embedding_model,
            "keyword_only": kb.keyword_only,
            "chunk_size": kb.chunk_size,
            "chunk_overlap": kb.chunk_overlap,
        }

    def add_files(self, name: str | None, paths: Sequence[Path]) -> BuildReport:
        """Decode and add uploaded files, recorded under their file names (re-uploads replace).

        Progress goes through tqdm (``show_progress``), which ``gr.Progress(track_tqdm=True)``
        turns into the page's progress bar.
        """
        kb = self.kb(name)
        report = kb.add_files(paths, sources=[path.name for path in paths], show_progress=True)
        with self._kb_lock:
            self._pending.discard(kb.name)
        return report

    def remove_document(self, name: str | None, doc_id: str) -> str:
        """Remove one document; returns its label for the status line."""
        kb = self.kb(name)
        label = doc_label(kb.get_document(doc_id))
        kb.remove([doc_id])
        return label

    def drop_kb(self, name: str | None) -> None:
        """Delete a knowledge base and its folder, damaged or not (it is never opened for this)."""
        name = self.check_kb_name(name)
        with self._kb_lock:
            kb = self._kbs.pop(name, None)
            self._pending.discard(name)
        if kb is not None:
            kb.close()
        KnowledgeBase.drop_from_settings(self.settings, name=name)

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
        **chain_fields: Any,
    ) -> Iterator[Event]:
        """Stream one answer: ``Sources``, ``Token`` pieces, ``Answer`` (passages if no LLM).

        ``llm`` replaces the shared model for this answer (the API passes a copy carrying the
        request's sampling options); ``chain_fields`` go to ``KnowledgeBaseQAChain``.
        """
        kb = self.kb(kb_name)
        retriever = kb.as_retriever(mode=mode, k=top_k)  # type: ignore[arg-type]
        chain = KnowledgeBaseQAChain.from_settings(
            retriever, llm if llm is not None else self.get_llm(), self.settings, **chain_fields
        )
        return chain.stream_answer(question, history=list(history), callbacks=callbacks)

    def summarize_document(self, kb_name: str, doc_id: str, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of a knowledge-base document (optionally a chapter range)."""
        docs = documents_from_kb(self.kb(kb_name), doc_id, chapters=chapters)
        return self._summary(docs)

    def summarize_file(self, path: Path, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of an uploaded text file (optionally a chapter range)."""
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

    # -- validation -----------------------------------------------------------------------

    @staticmethod
    def check_kb_name(name: str | None) -> str:
        """A safe knowledge-base folder name (``kb.validate_kb_name``), or a UserError."""
        name = (name or "").strip()
        if not name:
            raise UserError("请先选择或输入知识库名称", "choose or type a knowledge-base name first", param="name")
        try:
            return validate_kb_name(name)
        except KnowledgeBaseError as e:
            raise UserError(f"知识库名称无效：{name}", one_line(e), param="name", code="invalid_kb_name") from e

    def upload_types(self, *, text_only: bool = False) -> list[str]:
        """The upload suffixes the page accepts: every type ``kb.loaders`` reads, narrowed by
        ``ui.allowed_types`` when set; ``text_only`` for the summary's upload (plain text)."""
        from kb.loaders import SUPPORTED_SUFFIXES, TEXT_SUFFIXES

        supported = list(TEXT_SUFFIXES if text_only else SUPPORTED_SUFFIXES)
        wanted = self.settings.ui.allowed_types
        if wanted is None:
            return supported
        chosen = {t.lower() if t.startswith(".") else f".{t.lower()}" for t in wanted}
        return [s for s in supported if s in chosen]

    def check_upload(self, path: str | Path, *, text_only: bool = False) -> Path:
        """An uploaded file of an allowed type and size, or a UserError naming the limit."""
        path = Path(path)
        ui = self.settings.ui
        allowed = self.upload_types(text_only=text_only)
        if path.suffix.lower() not in allowed:
            raise UserError(
                f"不支持的文件类型：{path.name}（允许 {', '.join(allowed)}）",
                f"file type not allowed: {path.name} (allowed: {', '.join(allowed)}; "
                "set ui.allowed_types to change)",
            )
        size = path.stat().st_size
        limit = ui.max_upload_mb * 1024 * 1024
        if size > limit:
            raise UserError(
                f"文件过大：{path.name}（{size / 2**20:.1f} MB，上限 {ui.max_upload_mb} MB）",
                f"file too large: {path.name} is {size / 2**20:.1f} MB, the limit is "
                f"{ui.max_upload_mb} MB (ui.max_upload_mb)",
            )
        return path


def doc_label(info: DocumentInfo) -> str:
    """A document's name for pickers and tables: the file name it was uploaded or built from."""
    return Path(info.source.replace("\\", "/")).name or info.doc_id
