"""``AppState``: the one object the UI handlers share — settings, the lazily loaded model, KBs.

Everything here is safe to share between users: the chat model is created once under a lock
(``get_llm``), knowledge bases are opened once per name under a lock, and nothing per user
is kept here (chat history lives in each browser session's ``gr.State``). Tests build an
``AppState`` with a tiny model (``llm=`` or ``llm_factory=``) instead of a real checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseLanguageModel

from app import render

NO_LLM_REASON = "llm.model_path is not set (nor llm.backend: openai with llm.base_url)."
from app.errors import UserError, one_line
from app.shared_embeddings import SharedEmbeddings
from chains import KnowledgeBaseQAChain
from chains.events import Event
from chains.summarize import documents_from_file, documents_from_kb, stream_summary
from configs import Settings
from kb import (
    BuildReport,
    DocumentInfo,
    EmbeddingModelError,
    KnowledgeBase,
    KnowledgeBaseError,
    validate_kb_name,
)
from kb.embedding import is_keyword_only, load_embeddings, locate_model, model_identity

log = logging.getLogger(__name__)

LLMFactory = Callable[[], BaseLanguageModel]



class AppState:
    """Shared, thread-safe services behind the web UI."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: BaseLanguageModel | None = None,
        llm_factory: LLMFactory | None = None,
    ) -> None:
        self.settings = settings
        self._llm = llm
        self._llm_factory = llm_factory
        self._llm_error: str | None = None
        self._llm_loading = False
        self._llm_lock = threading.Lock()
        self._kbs: dict[str, KnowledgeBase] = {}
        self._pending: set[str] = set()
        self._kb_lock = threading.RLock()
        self._embeddings: dict[str, Embeddings] = {}
        self._embedding_errors: dict[str, str] = {}
        self._embedding_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AppState:
        """The production state: the chat model comes from ``settings.llm`` on first use."""
        from llm.factory import llm_configured, load_llm

        factory = None
        if llm_configured(settings):
            def factory() -> BaseLanguageModel:
                return load_llm(settings)

        state = cls(settings, llm_factory=factory)
        state.check_embedding_setting()
        return state

    # -- chat model -------------------------------------------------------------------

    def get_llm(self) -> BaseLanguageModel | None:
        """The shared chat model, loaded on first call (other callers wait); None if unavailable."""
        if self._llm is not None or self._llm_error is not None:
            return self._llm
        with self._llm_lock:
            if self._llm is None and self._llm_error is None:
                self._load_llm()
            return self._llm

    def _load_llm(self) -> None:
        if self._llm_factory is None:
            self._llm_error = NO_LLM_REASON
            return
        self._llm_loading = True
        try:
            self._llm = self._llm_factory()
            log.info("chat model loaded")
        except Exception as e:  # the UI keeps serving retrieval; the banner says why
            log.exception("chat model failed to load")
            self._llm_error = f"加载失败 / failed to load: {one_line(e)}"
        finally:
            self._llm_loading = False

    def warm_up(self) -> None:
        """Load the chat model now (called in a background thread at server start)."""
        self.get_llm()

    def llm_problem(self) -> str | None:
        """Banner text about the chat model, or None when it is loaded (or will load on demand)."""
        if self._llm is not None:
            return None
        if self._llm_error is not None:
            return render.llm_problem(self._llm_error)
        if self._llm_factory is None:
            return render.llm_problem(NO_LLM_REASON)
        if self._llm_loading:
            target = self.settings.llm.model_path or self.settings.llm.base_url or ""
            return render.llm_problem(str(target), loading=True)
        return None

    def banner_markdown(self) -> str:
        """Everything the user should know is missing, as the banner's Markdown ('' if nothing)."""
        problems = [p for p in (self.llm_problem(), self.embedding_problem()) if p]
        return render.banner(problems)

    # -- embedding models -------------------------------------------------------------

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
        """The shared embedding model ``model`` (loaded once, under a lock); raises EmbeddingModelError."""
        key = model_identity(model)
        with self._embedding_lock:
            if key in self._embedding_errors:
                raise EmbeddingModelError(self._embedding_errors[key])
            if key not in self._embeddings:
                emb = self.settings.embedding
                try:
                    self._embeddings[key] = load_embeddings(
                        model, device=emb.device, batch_size=emb.batch_size
                    )
                except EmbeddingModelError as e:
                    self._embedding_errors[key] = one_line(e)
                    raise
            return self._embeddings[key]

    def embedding_problem(self) -> str | None:
        """Banner text when an embedding model cannot be used, else None."""
        if not self._embedding_errors:
            return None
        return render.embedding_problem(" ".join(self._embedding_errors.values()))

    def usable_mode(self, kb_name: str, mode: str) -> tuple[str, tuple[str, str] | None]:
        """``mode``, or ``bm25`` plus a warning when the KB's embedding model cannot be loaded."""
        kb = self.open_kb(kb_name)
        if mode == "bm25" or kb.keyword_only:
            return mode, None
        try:
            self.embeddings_for(kb.embedding_model)
        except EmbeddingModelError as e:
            return "bm25", (
                "向量模型不可用，已改用关键词检索 (bm25)",
                f"embedding model unavailable, searched by keywords (bm25) instead: {one_line(e)}",
            )
        return mode, None

    # -- knowledge bases -------------------------------------------------------------------

    def list_kbs(self) -> list[str]:
        """Built knowledge bases under kb_root plus ones created here and not yet built."""
        with self._kb_lock:
            built = set(KnowledgeBase.list_names(self.settings.kb_root))
            self._pending -= built
            return sorted(built | self._pending)

    def create_kb(self, name: str | None) -> str:
        """Reserve a new knowledge-base name; it is written to disk with its first documents."""
        name = self.check_kb_name(name)
        with self._kb_lock:
            if name in KnowledgeBase.list_names(self.settings.kb_root) or name in self._pending:
                raise UserError(f"知识库 {name} 已存在", f"knowledge base {name!r} already exists")
            self._pending.add(name)
        return name

    def open_kb(self, name: str | None) -> KnowledgeBase:
        """The shared ``KnowledgeBase`` object for ``name`` (opened once; it reloads new builds)."""
        name = self.check_kb_name(name)
        with self._kb_lock:
            if name not in self.list_kbs():
                self._kbs.pop(name, None)
                raise UserError(
                    f"没有名为 {name} 的知识库，请先在“知识库管理”中创建",
                    f"no knowledge base named {name!r}: create it in the Manage tab first",
                )
            kb = self._kbs.get(name)
            if kb is None or not (kb.exists or name in self._pending):
                kb = KnowledgeBase.from_settings(self.settings, name=name, create=name in self._pending)
                if not kb.keyword_only:
                    kb.set_embeddings(SharedEmbeddings(state=self, model=kb.embedding_model))
                self._kbs[name] = kb
            return kb

    def list_documents(self, name: str | None) -> list[DocumentInfo]:
        """The documents of a knowledge base (none for one created but not built yet)."""
        return self.open_kb(name).list_documents()

    def add_files(self, name: str | None, paths: Sequence[Path]) -> BuildReport:
        """Decode and add uploaded files, recorded under their file names (re-uploads replace).

        Progress goes through tqdm (``show_progress``), which ``gr.Progress(track_tqdm=True)``
        turns into the page's progress bar.
        """
        kb = self.open_kb(name)
        report = kb.add_files(paths, sources=[path.name for path in paths], show_progress=True)
        with self._kb_lock:
            self._pending.discard(kb.name)
        return report

    def remove_document(self, name: str | None, doc_id: str) -> str:
        """Remove one document; returns its label for the status line."""
        kb = self.open_kb(name)
        label = doc_label(kb.get_document(doc_id))
        kb.remove([doc_id])
        return label

    def drop_kb(self, name: str | None) -> None:
        """Delete a knowledge base from disk (or forget one that was never built)."""
        name = self.check_kb_name(name)
        with self._kb_lock:
            kb = self._kbs.pop(name, None)
            if name in self._pending:
                self._pending.discard(name)
                return
        (kb or KnowledgeBase.from_settings(self.settings, name=name)).drop()

    # -- chains ----------------------------------------------------------------------------

    def ask(
        self,
        kb_name: str,
        question: str,
        *,
        history: Sequence[tuple[str, str]],
        mode: str,
        top_k: int,
    ) -> Iterator[Event]:
        """Stream one answer: ``Sources``, ``Token`` pieces, ``Answer`` (passages if no LLM)."""
        kb = self.open_kb(kb_name)
        retriever = kb.as_retriever(mode=mode, k=top_k)
        chain = KnowledgeBaseQAChain.from_settings(retriever, self.get_llm(), self.settings)
        return chain.stream_answer(question, history=list(history))

    def summarize_document(self, kb_name: str, doc_id: str, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of a knowledge-base document (optionally a chapter range)."""
        docs = documents_from_kb(self.open_kb(kb_name), doc_id, chapters=chapters)
        return self._summary(docs)

    def summarize_file(self, path: Path, *, chapters: str | None) -> Iterator[Event]:
        """Stream a summary of an uploaded text file (optionally a chapter range)."""
        return self._summary(documents_from_file(path, chapters=chapters))

    def _summary(self, docs: list[Document]) -> Iterator[Event]:
        llm = self.get_llm()
        if llm is None:
            raise UserError(
                "总结需要大模型，请先配置 llm.model_path",
                "summaries need a chat model: set --model-path DIR or GLMKB_LLM__MODEL_PATH",
            )
        return stream_summary(docs, llm=llm, max_input_tokens=self.settings.llm.max_input_tokens)

    # -- validation ---------------------------------------------------------------------

    @staticmethod
    def check_kb_name(name: str | None) -> str:
        """A safe knowledge-base folder name (``kb.validate_kb_name``), or a UserError."""
        name = (name or "").strip()
        if not name:
            raise UserError("请先选择或输入知识库名称", "choose or type a knowledge-base name first")
        try:
            return validate_kb_name(name)
        except KnowledgeBaseError as e:
            raise UserError(f"知识库名称无效：{name}", one_line(e)) from e

    def check_upload(self, path: str | Path) -> Path:
        """An uploaded file of an allowed type and size, or a UserError naming the limit."""
        path = Path(path)
        ui = self.settings.ui
        allowed = [t.lower() if t.startswith(".") else f".{t.lower()}" for t in ui.allowed_types]
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
