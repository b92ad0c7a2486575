"""``ChatGLMChat``: a LangChain chat model over the same loaded model as ``llm.ChatGLM``.

The ``ChatHuggingFace`` over ``HuggingFacePipeline`` pattern of langchain-huggingface:
``ChatGLMChat(llm=ChatGLM(...))`` renders LangChain messages through the model's own chat
template (a ``SystemMessage`` fills the ``<|system|>`` slot, Human/AI turns become user and
assistant turns) and generates through ``ChatGLM``'s one generation core (worker thread, fast
decode, stop sequences, cancellation), so both faces share one model, one worker and one lock.
Tools, structured output and image/audio/PDF inputs are not supported.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field

from configs.settings import LLMSettings
from llm.async_stream import AsyncChunkStream
from llm.chat_messages import chat_template_messages
from llm.chatglm import ChatGLM
from llm.reasoning import message_chunk
from llm.special_tokens import neutralize_special_tokens
from llm.streaming import GenerationStats

__all__ = ["ChatGLMChat"]

# Per-call LangChain options with another name in ChatGLM's generation core.
_ALIASES = {"max_tokens": "max_new_tokens"}


class ChatGLMChat(BaseChatModel):
    """A chat model over ``ChatGLM``'s loaded model: chat template, streaming, usage, cancellation.

    Fields left ``None`` (``max_tokens``, ``temperature``, ``top_p``, ``repetition_penalty``)
    take ``llm``'s values; any per-call keyword goes on to ``ChatGLM`` (``max_tokens`` becomes
    ``max_new_tokens``); ``check_capacity`` is ``llm``'s (the API's 503 before a stream). Every
    answer's ``usage_metadata`` counts prompt and generated tokens, and its
    ``response_metadata["finish_reason"]`` is ``"length"`` when ``max_tokens`` cut it, else
    ``"stop"`` (on the last chunk when streaming). Closing a stream, cancelling an ``astream``
    task or setting an ``llm.cancel_scope`` event stops generation within a token.

    Example:
        ```python
        from langchain_core.messages import HumanMessage, SystemMessage
        from llm import ChatGLMChat

        chat = ChatGLMChat.from_model_path("/models/glm-4-9b-chat-hf", max_tokens=256)
        for chunk in chat.stream([SystemMessage("你是三国专家。"), HumanMessage("刘备字什么？")]):
            print(chunk.text, end="", flush=True)
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    llm: ChatGLM = Field(description="The local model (its generation defaults and system prompt apply).")
    max_tokens: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("max_tokens", "max_new_tokens"), description="Most new tokens."
    )
    temperature: float | None = Field(None, ge=0.0, description="0 means greedy decoding.")
    top_p: float | None = Field(None, ge=0.0, le=1.0)  # 0: greedy, as OpenAI's API takes it
    repetition_penalty: float | None = Field(None, gt=0.0)
    enable_thinking: bool | None = Field(
        None, description="A reasoning model's thinking: None = the model's own setting, False = off, True = on."
    )
    stop: list[str] | None = Field(None, description="Stop sequences of every call (added to per-call ones).")
    model_name: str | None = Field(None, description="Name for traces; defaults to the model folder's name.")

    # ----- construction -------------------------------------------------------------------

    @classmethod
    def from_model_path(cls, path: str | Path, **fields: Any) -> ChatGLMChat:
        """Load a local model folder with ``ChatGLM.from_model_path`` and wrap it: ``fields`` of this
        class (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``model_name``) go here, the rest
        to ``ChatGLM.from_model_path``: its loading options (``device``, ``dtype``, ``quantization``,
        ``adapter``, ...) and ``ChatGLM`` fields (``system_prompt``, ``max_new_tokens``, ``fast_decode``, ...)."""
        own = {name: fields.pop(name) for name in list(fields) if name in cls.model_fields and name != "llm"}
        return cls(llm=ChatGLM.from_model_path(path, **fields), **own)

    @classmethod
    def from_settings(cls, settings: LLMSettings, **fields: Any) -> ChatGLMChat:
        """Load the model named by the ``llm`` settings section (``ChatGLM.from_settings``)."""
        return cls(llm=ChatGLM.from_settings(settings), **fields)

    # ----- LangChain identity -------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "chatglm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            **self.llm._identifying_params,
            "model_name": self.resolved_model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
        }

    @property
    def resolved_model_name(self) -> str:
        """``model_name``, else the model folder's name, else the model class."""
        if self.model_name:
            return self.model_name
        if self.llm.model_path:
            return Path(self.llm.model_path).name or self.llm.model_path
        return type(self.llm.model).__name__

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="chatglm",
            ls_model_name=str(kwargs.get("model") or self.resolved_model_name),
            ls_model_type="chat",
        )
        options = self._options(kwargs)
        params["ls_temperature"] = float(options.get("temperature", self.llm.temperature))
        params["ls_max_tokens"] = int(options.get("max_new_tokens", self.llm.max_new_tokens))
        if stop or self.stop:
            params["ls_stop"] = self._stops(stop)
        return params

    # Tool calling: not supported, so ``bind_tools`` is BaseChatModel's own (it raises
    # NotImplementedError). An override, even one that raises, reads as support to LangChain's
    # standard suites (``has_tool_calling`` compares the method with the base class's).

    # ----- tokens -----------------------------------------------------------------------------

    def get_num_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (the real tokenizer)."""
        return self.llm.get_num_tokens(text)

    def get_token_ids(self, text: str) -> list[int]:
        return self.llm.get_token_ids(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the whole rendered chat, template included (what the model will read)."""
        return len(self.llm.tokenizer.encode(self.render(messages), add_special_tokens=False))

    def render(self, messages: Sequence[BaseMessage]) -> str:
        """The exact model input text for ``messages`` (the chat template, ending in the assistant turn)."""
        return self.llm.render_messages(self._template_messages(messages), enable_thinking=self.enable_thinking)

    def check_capacity(self) -> None:
        """``ChatGLM.check_capacity``: ``llm.batching.Busy`` (HTTP 503) now when the model's queue is full."""
        self.llm.check_capacity()

    # ----- generation ---------------------------------------------------------------------

    def _template_messages(self, messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
        """The chat for the template; ``llm.system_prompt`` fills the system slot if no message does."""
        chat = chat_template_messages(messages, self.llm.tokenizer)
        if self.llm.system_prompt and not any(m["role"] == "system" for m in chat):
            system = neutralize_special_tokens(self.llm.system_prompt, self.llm.tokenizer)
            chat.insert(0, {"role": "system", "content": system})
        return chat

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Generation options of a call for ChatGLM: fields set here, then per-call overrides."""
        fields = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "enable_thinking": self.enable_thinking,
        }
        options = {name: value for name, value in fields.items() if value is not None}
        for name, value in kwargs.items():
            if name == "model":  # a trace-only override (there is one local model)
                continue
            options[_ALIASES.get(name, name)] = value
        return options

    def _stops(self, stop: list[str] | None) -> list[str] | None:
        stops = [*(self.stop or []), *(stop or [])]
        return stops or None

    def _iter_chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, cancel: threading.Event, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        """Message chunks as tokens arrive, then an empty last chunk carrying usage and finish_reason.

        Closing this generator stops generation (ChatGLM's core sets ``cancel`` and waits).
        """
        stats = GenerationStats()
        options = {**self._options(kwargs), "messages": self._template_messages(messages)}
        pieces = self.llm._iter_text("", self._stops(stop), cancel=cancel, stats=stats, **options)
        try:
            for piece in pieces:
                if piece.answer or piece.reasoning:
                    yield ChatGenerationChunk(message=message_chunk(piece))
        finally:
            pieces.close()
        yield self._last_chunk(stats)

    def _last_chunk(self, stats: GenerationStats) -> ChatGenerationChunk:
        usage = UsageMetadata(
            input_tokens=stats.input_tokens, output_tokens=stats.output_tokens, total_tokens=stats.total_tokens
        )
        metadata = {"finish_reason": stats.finish_reason, "model_name": self.resolved_model_name}
        message = AIMessageChunk(content="", usage_metadata=usage, response_metadata=metadata, chunk_position="last")
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": stats.finish_reason})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # BaseChatModel.stream reports each chunk to the callbacks itself.
        return self._iter_chunks(messages, stop, threading.Event(), kwargs)

    def _astream(  # type: ignore[override]
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Steps the blocking stream on a thread; closing, cancelling or dropping it stops generation."""
        cancel = threading.Event()
        return AsyncChunkStream(self._iter_chunks(messages, stop, cancel, kwargs), cancel)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = self._stream(messages, stop, run_manager, **kwargs)
        if run_manager is not None:
            chunks = _reported(chunks, run_manager.on_llm_new_token)
        return generate_from_stream(chunks)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = []
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return generate_from_stream(iter(chunks))


def _reported(chunks: Iterator[ChatGenerationChunk], on_token: Callable[..., Any]) -> Iterator[ChatGenerationChunk]:
    """``chunks``, reporting each text chunk to ``on_token`` (invoke streams to its callbacks too)."""
    try:
        for chunk in chunks:
            if chunk.text:
                on_token(chunk.text, chunk=chunk)
            yield chunk
    finally:
        chunks.close()  # type: ignore[attr-defined]
