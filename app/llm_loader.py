"""``LLMLoader``: the one chat model of a process, loaded on first use under a lock (other callers
wait for that same load), its chat face, and where it stands for the web UI's banner.

A failed load is kept as a one-line reason, so the servers keep serving retrieval and say why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel, BaseLanguageModel

from app.errors import NotReady, one_line
from configs import Settings

__all__ = ["NO_LLM_HOWTO", "NO_LLM_REASON", "LLMFactory", "LLMLoader", "LLMStatus"]

log = logging.getLogger(__name__)

LLMFactory = Callable[[], BaseLanguageModel]

NO_LLM_REASON = "llm.model_path is not set (nor llm.backend: openai with llm.base_url)."
NO_LLM_HOWTO = (
    "no chat model is configured: start the server with --model-path DIR (or GLMKB_LLM__MODEL_PATH, or "
    "llm.model_path in the --config YAML), or set llm.backend: openai with llm.base_url and llm.model "
    "to use an OpenAI-compatible server; knowledge-base queries work without one"
)


@dataclass(frozen=True)
class LLMStatus:
    """Where the chat model stands: loaded, loading, failed (``error``) or not configured."""

    loaded: bool
    loading: bool
    configured: bool
    error: str | None
    target: str


class LLMLoader:
    """The shared chat model: ``llm`` given, or made by ``factory`` on first use (None: none)."""

    def __init__(
        self, settings: Settings, *, llm: BaseLanguageModel | None = None, factory: LLMFactory | None = None
    ) -> None:
        self.settings = settings
        self.loaded = llm
        """The model once loaded (or given); None before the first load and when there is none."""
        self.factory = factory
        self.error: str | None = None
        self.loading = False
        self._lock = threading.Lock()
        self._chat: BaseChatModel | None = None

    @property
    def has_llm(self) -> bool:
        """Whether a chat model is (or will be) available; False when none is configured."""
        return self.loaded is not None or (self.factory is not None and self.error is None)

    def get_llm(self) -> BaseLanguageModel | None:
        """The shared chat model, loaded on first call (other callers wait); None if unavailable."""
        if self.loaded is None and self.error is None:
            with self._lock:
                if self.loaded is None and self.error is None:
                    self._load()
        return self.loaded

    def require_llm(self) -> BaseLanguageModel:
        """The shared chat model, or ``NotReady`` saying why there is none and how to configure one."""
        llm = self.get_llm()
        if llm is None:
            error = self.error
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

    def _load(self) -> None:
        if self.factory is None:
            self.error = NO_LLM_REASON
            return
        self.loading = True
        try:
            self.loaded = self.factory()
            log.info("chat model ready: %s", type(self.loaded).__name__)
        except Exception as e:  # the servers keep serving retrieval; the banner/503 says why
            log.exception("chat model failed to load")
            self.error = f"the chat model failed to load: {one_line(e)}"
        finally:
            self.loading = False

    def status(self) -> LLMStatus:
        """Where the chat model stands, for the web UI's banner."""
        target = self.settings.llm.model_path or self.settings.llm.base_url or ""
        error = self.error
        if error is None and self.loaded is None and self.factory is None:
            error = NO_LLM_REASON
        return LLMStatus(
            loaded=self.loaded is not None,
            loading=self.loading,
            configured=self.loaded is not None or self.factory is not None,
            error=error,
            target=str(target),
        )
