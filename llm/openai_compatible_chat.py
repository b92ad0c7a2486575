"""``OpenAICompatibleChat``: LangChain's ``ChatOpenAI`` for OpenAI-compatible model servers.

For ``llm.backend: openai``: vLLM, SGLang, Xinference or glmkb's own API server. Three things
differ from plain ``ChatOpenAI``:

- Token counting works offline. ``ChatOpenAI`` counts with tiktoken, which downloads its BPE
  files on first use (and counts GPT tokens, not GLM ones). The chains budget prompts with
  ``get_num_tokens``, so this class counts with a local tokenizer when one is given (the
  factory loads it from ``llm.model_path`` when that points at the served model's folder),
  and otherwise with ``estimate_tokens``: one token per CJK character, one per three other
  characters. Real GLM-4/ChatGLM3 tokenizers need about 0.6-0.8 tokens per Chinese character
  and ~4 characters per English token, so the estimate errs high: prompts are cut a little
  shorter than necessary, never longer than the server accepts.
- Server failures become one-line ``LLMServerError``s that name ``base_url`` and the setting
  to fix (connection refused, 401, 404, timeouts), instead of the SDK's bare "Connection error.".
- ``system_prompt`` (``llm.system_prompt``) is sent as a system message when a call has none,
  like the local backend does.
- A reasoning model's thinking, which servers send beside the answer (DeepSeek's API and vLLM before
  its rename: ``reasoning_content``; vLLM since late 2025, OpenRouter: ``reasoning``), is kept as
  ``additional_kwargs["reasoning_content"]``, where the local backend puts it (``llm.reasoning``);
  ``ChatOpenAI`` drops it. A server without a reasoning parser leaves ``<think>...</think>`` in the
  content: a block the model opened itself is moved there too (one the server's chat template opened
  in the prompt cannot be told from the answer here: give such a server its reasoning parser).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

import openai
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field

from configs.settings import LLMSettings
from llm.errors import ModelLoadError
from llm.reasoning import ReasoningSplitter, Split, message_chunk, split_reasoning

__all__ = ["NO_KEY_PLACEHOLDER", "LLMServerError", "OpenAICompatibleChat", "estimate_tokens"]

NO_KEY_PLACEHOLDER = "EMPTY"
"""Sent as the API key when ``llm.api_key_env`` is unset (servers without auth ignore it)."""

# CJK ideographs and punctuation, kana, hangul, full-width forms: about one token each.
_WIDE = re.compile(
    "[\u2e80-\u2fff\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff]"
)


class LLMServerError(OSError):
    """The OpenAI-compatible model server could not be used; the message says why and what to fix."""


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` without a tokenizer: 1 per CJK character + 1 per 3 other characters.

    Errs high for GLM-family tokenizers (see the module docstring) and grows with every
    character added, so binary searches over prefixes (``truncate_to_tokens``) stay valid.
    """
    wide = len(_WIDE.findall(text))
    return wide + math.ceil((len(text) - wide) / 3)


class OpenAICompatibleChat(ChatOpenAI):
    """``ChatOpenAI`` that counts tokens offline and explains server failures in one line.

    Build it from settings with ``OpenAICompatibleChat.from_settings(settings.llm)`` (or
    ``llm.factory.load_llm(settings)``); it streams token by token (``streaming=True``) and asks
    for the token usage at the end of each stream (``stream_usage=True``).
    """

    tokenizer: Any = Field(default=None, exclude=True, repr=False)
    """Optional local tokenizer of the served model (``encode(text, add_special_tokens=False)``)."""
    system_prompt: str | None = None
    """Sent as the first message when a call brings no system message of its own."""
    api_key_env: str | None = None
    """Name of the environment variable the key came from (for error messages only)."""
    repetition_penalty: float | None = None
    """``llm.generation.repetition_penalty`` where not 1.0, sent in ``extra_body`` (vLLM's, SGLang's and
    glmkb's extension) when not None, never otherwise; per call: ``invoke(..., repetition_penalty=1.1)``."""
    enable_thinking: bool | None = None
    """A reasoning model's thinking (``llm.enable_thinking``), sent as ``chat_template_kwargs.enable_thinking``
    (the same servers' extension) when not None, never otherwise; per call:
    ``invoke(..., enable_thinking=False)``, as ``ChatGLM`` takes it (the web UI's 深度思考 box)."""
    switch_thinking_unasked: ClassVar[bool] = False
    """The steps that turn thinking off on their own (``llm.reasoning.thinking_off``: a rewrite, map notes)
    send the switch only where ``enable_thinking`` is set: the server may refuse ``chat_template_kwargs``."""

    @classmethod
    def from_settings(
        cls, settings: LLMSettings, *, tokenizer: Any = None, **fields: Any
    ) -> OpenAICompatibleChat:
        """The client for ``llm.base_url``/``llm.model``, key from ``$llm.api_key_env``."""
        if not settings.base_url:
            raise ModelLoadError(
                "llm.backend is openai but llm.base_url is not set: set it to the server's "
                "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (YAML or GLMKB_LLM__BASE_URL)"
            )
        if not settings.model:
            raise ModelLoadError(
                f"llm.backend is openai but llm.model is not set: set it to a model name that "
                f"{settings.base_url.rstrip('/')}/models lists (e.g. the vLLM --served-model-name)"
            )
        generation = settings.generation
        defaults: dict[str, Any] = {
            "model": settings.model,
            "base_url": settings.base_url,
            "api_key": os.environ.get(settings.api_key_env) or NO_KEY_PLACEHOLDER,
            "api_key_env": settings.api_key_env,
            "timeout": settings.request_timeout,
            "stream_chunk_timeout": settings.request_timeout,
            "max_retries": 1,
            "streaming": True,
            "stream_usage": True,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "max_tokens": generation.max_new_tokens,
            "system_prompt": settings.system_prompt,
            "tokenizer": tokenizer,
            "repetition_penalty": generation.repetition_penalty if generation.repetition_penalty != 1.0 else None,
            "enable_thinking": settings.enable_thinking,
        }
        return cls(**{**defaults, **fields})

    # ----- a reasoning model's thinking ------------------------------------------------------

    def _convert_chunk_to_generation_chunk(
        self, chunk: dict, default_chunk_class: type, base_generation_info: dict | None
    ) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices") or [{}]
        reasoning = server_reasoning(choices[0].get("delta"))
        if generation is not None and reasoning:
            generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation

    def _create_chat_result(self, response: dict | openai.BaseModel, generation_info: dict | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        data = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, data.get("choices") or [], strict=False):
            message = generation.message
            if reasoning := server_reasoning(choice.get("message")):
                message.additional_kwargs["reasoning_content"] = reasoning
            if isinstance(message.content, str) and (split := split_reasoning(message.content)).reasoning:
                message.content = split.answer
                message.additional_kwargs["reasoning_content"] = (
                    message.additional_kwargs.get("reasoning_content", "") + split.reasoning)
        return result

    # ----- token counting (offline) ---------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        if self.tokenizer is None:
            raise NotImplementedError(
                "token ids need a local tokenizer: set llm.model_path to the served model's folder"
            )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text``: the local tokenizer if given, else ``estimate_tokens``."""
        if self.tokenizer is None and self.custom_get_token_ids is None:
            return estimate_tokens(text)
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(self, messages: Sequence[BaseMessage], *args: Any, **kwargs: Any) -> int:
        """Tokens of the messages' text plus 4 per message for the chat template's role markers."""
        return sum(self.get_num_tokens(m.text) + 4 for m in messages)

    # ----- system prompt and errors around every request ---------------------------------------

    def _get_request_payload(self, input_: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any) -> dict:
        """``ChatOpenAI``'s request body (every path builds it here), with ``system_prompt``
        first when the messages bring no system message of their own, and the servers' extensions
        (``repetition_penalty``, ``enable_thinking``: the call's, else the field's) in ``extra_body``.
        Neither is an OpenAI parameter: each is sent only where asked for, so a server that refuses
        unknown parameters is never sent one."""
        messages = self._convert_input(input_).to_messages()
        if self.system_prompt and not any(isinstance(m, SystemMessage) for m in messages):
            messages = [SystemMessage(self.system_prompt), *messages]
        extensions = {name: kwargs.pop(name, None) for name in ("repetition_penalty", "enable_thinking")}
        extensions = {name: getattr(self, name) if value is None else value for name, value in extensions.items()}
        if any(value is not None for value in extensions.values()):
            kwargs["extra_body"] = with_extensions(kwargs.get("extra_body", self.extra_body), **extensions)
        return super()._get_request_payload(messages, stop=stop, **kwargs)

    # The four ways ``ChatOpenAI`` calls the server, each with its SDK errors made one line.

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        with self._server_errors():
            splitter = ReasoningSplitter()
            for chunk in super()._stream(*args, **kwargs):
                yield _thinking_apart(chunk, splitter.feed(_content(chunk)))
            if tail := _tail_chunk(splitter.finish()):
                yield tail

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._server_errors():
            return super()._generate(*args, **kwargs)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        with self._server_errors():
            splitter = ReasoningSplitter()
            async for chunk in super()._astream(*args, **kwargs):
                yield _thinking_apart(chunk, splitter.feed(_content(chunk)))
            if tail := _tail_chunk(splitter.finish()):
                yield tail

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._server_errors():
            return await super()._agenerate(*args, **kwargs)

    @contextlib.contextmanager
    def _server_errors(self) -> Iterator[None]:
        """Re-raise the SDK's errors as ``LLMServerError`` with a message that says what to fix."""
        try:
            yield
        except openai.OpenAIError as e:
            raise LLMServerError(self.describe_error(e)) from e
        except asyncio.TimeoutError as e:  # langchain-openai's stream_chunk_timeout (async streams)
            raise LLMServerError(self._timeout_message()) from e

    def describe_error(self, error: BaseException) -> str:
        """One line for a failed request: what happened at which server, and what to change."""
        url = self._url()
        if isinstance(error, openai.APITimeoutError):
            return self._timeout_message()
        if isinstance(error, openai.APIConnectionError):
            cause = _one_line(_root_cause(error))
            return (
                f"cannot reach the model server at {url} ({cause}); start it (e.g. vllm serve ... "
                "or glmkb-api) or fix llm.base_url"
            )
        if isinstance(error, openai.APIStatusError):
            detail = _server_message(error)
            status = error.status_code
            if status == 401:
                return (
                    f"the model server at {url} rejected the API key (HTTP 401: {detail}); put the "
                    f"server's key in the environment variable {self.api_key_env or 'OPENAI_API_KEY'} "
                    "(llm.api_key_env)"
                )
            if status == 404:
                return (
                    f"the model server at {url} answered HTTP 404 ({detail}); check that llm.model "
                    f"({self.model_name!r}) is a name listed by {url}/models"
                )
            return f"the model server at {url} answered HTTP {status}: {detail}"
        return f"request to the model server at {url} failed: {_one_line(error)}"

    def _timeout_message(self) -> str:
        return (
            f"the model server at {self._url()} did not answer within {self.request_timeout} s "
            "(llm.request_timeout); it may be overloaded or still loading the model: raise "
            "llm.request_timeout or check the server"
        )

    def _url(self) -> str:
        return (self.openai_api_base or "https://api.openai.com/v1").rstrip("/")


def _content(chunk: ChatGenerationChunk) -> str:
    return chunk.message.content if isinstance(chunk.message.content, str) else ""


def _thinking_apart(chunk: ChatGenerationChunk, piece: Split) -> ChatGenerationChunk:
    """``chunk`` with the thinking its content held (``piece``) moved to ``reasoning_content``."""
    if piece == Split("", _content(chunk)):
        return chunk
    message = chunk.message
    extra = dict(message.additional_kwargs)
    if piece.reasoning:
        extra["reasoning_content"] = extra.get("reasoning_content", "") + piece.reasoning
    update = {"content": piece.answer, "additional_kwargs": extra}
    return ChatGenerationChunk(message=message.model_copy(update=update), generation_info=chunk.generation_info)


def _tail_chunk(piece: Split) -> ChatGenerationChunk | None:
    """What the splitter still held at the end of a stream, as one more chunk."""
    return ChatGenerationChunk(message=message_chunk(piece)) if piece.reasoning or piece.answer else None


def with_extensions(
    extra_body: Any, *, repetition_penalty: float | None, enable_thinking: bool | None
) -> dict[str, Any]:
    """``extra_body`` with vLLM's ``repetition_penalty`` and ``chat_template_kwargs.enable_thinking`` set
    where not None, the rest kept."""
    extra = dict(extra_body or {})
    if repetition_penalty is not None:
        extra["repetition_penalty"] = repetition_penalty
    if enable_thinking is not None:
        template = extra.get("chat_template_kwargs") or {}
        extra["chat_template_kwargs"] = {**template, "enable_thinking": enable_thinking}
    return extra


def server_reasoning(message: dict | None) -> str:
    """The thinking a server sent in a message or delta, under either name (``reasoning_content`` or
    ``reasoning``: ``app.api.wire.thinking_fields``)."""
    message = message or {}
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return _one_line(inner["message"])
    return _one_line(error.message)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception (e.g. ``ConnectionRefusedError``) behind the SDK's wrappers."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def _one_line(value: object) -> str:
    return " ".join(str(value).split()) or type(value).__name__
