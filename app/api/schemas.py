"""Request bodies of glmkb's OpenAI-compatible API, validated by pydantic.

Unknown fields are ignored (OpenAI clients send many optional ones, e.g. ``presence_penalty``
or ``user``); fields whose meaning we cannot honour (``n`` > 1, ``tools`` or ``functions``, image content,
JSON response formats) are refused with a 400 that says so rather than silently dropped.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kb.types import RetrievalMode as Mode

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "EmbeddingRequest",
    "KBChatRequest",
    "KBQueryRequest",
    "MAX_STOP_SEQUENCES",
    "StreamOptions",
]

MAX_STOP_SEQUENCES = 16
_SURROGATE = re.compile("[\ud800-\udfff]")


def no_lone_surrogates(text: str) -> str:
    """Refuse text holding UTF-16 surrogates (JSON ``"\\ud800"`` decodes to one): no tokenizer
    or UTF-8 encoder takes them (issue 20 #16: a 500 from chat completions)."""
    if _SURROGATE.search(text):
        raise ValueError("the text contains a lone UTF-16 surrogate (e.g. \\ud800); send valid Unicode")
    return text


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Body):
    """One chat message; ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                if part.get("type") != "text":
                    raise ValueError(
                        f"only text content parts are supported (got a part of type {part.get('type')!r})"
                    )
                if not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs a string 'text' field")
                no_lone_surrogates(part["text"])
        elif isinstance(value, str):
            no_lone_surrogates(value)
        return value

    def text(self) -> str:
        """The message's text (content parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str | None = Field(None, description="Served model id (GET /v1/models); empty = the served model.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = Field(False, description="null means false, as in OpenAI's API.")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="0 keeps only the likeliest token: greedy.")
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    # 1e-300 divided logits into inf/nan and crashed sampling (issue 20 #16: a 500).
    repetition_penalty: float | None = Field(None, ge=0.05, le=20.0, description="vLLM-style extension.")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="vLLM-style extension: {\"enable_thinking\": false} turns a reasoning model's thinking off "
        "(true: on); other keys are ignored.",
    )
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = Field(None, description="OpenAI's deprecated tools; refused like tools.")
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed (got {len(stops)})")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"only n=1 is supported (got {value}); send several requests instead")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:  # ``functions`` was silently dropped: the client waited for a function_call in vain
            raise ValueError("tool calling is not supported by this server")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported by this server; omit logprobs or send false")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("top_logprobs is not supported by this server (no logprobs)")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type", "text") != "text":
            raise ValueError(f"only the text response format is supported (got {value.get('type')!r})")
        return value

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatCompletionRequest:
        turns = [m for m in self.messages if m.role not in ("system", "developer")]
        if not turns or turns[-1].role != "user":
            raise ValueError("the last message (after any system messages) must have role 'user'")
        return self

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @field_validator("chat_template_kwargs")
    @classmethod
    def _thinking_switch(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and "enable_thinking" in value and not isinstance(value["enable_thinking"], (bool, type(None))):
            raise ValueError("chat_template_kwargs.enable_thinking must be true, false or null")
        return value

    def enable_thinking(self) -> bool | None:
        """``chat_template_kwargs.enable_thinking``: None when the request does not say."""
        return (self.chat_template_kwargs or {}).get("enable_thinking")

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class KBChatRequest(ChatCompletionRequest):
    """``POST /v1/kb/{name}/chat/completions``: a chat request plus retrieval options."""

    k: int | None = Field(None, ge=1, le=100, description="Passages retrieved (default retrieval.top_k).")
    mode: Mode | None = Field(None, description="dense, bm25 or hybrid (default retrieval.mode).")
    scope: Literal["chunk", "book"] = Field(
        "chunk",
        description="chunk: answer from the retrieved passages; book: whole-book map-reduce over the "
        "chapters that matter (the last user message is the question; earlier turns are not used).",
    )
    chapters: str | None = Field(None, max_length=64, description='scope "book": a chapter range, e.g. 第40-60回.')
    source: str | None = Field(None, max_length=1024, description='scope "book": one document (file name or doc_id).')

    @model_validator(mode="after")
    def _book_options(self) -> KBChatRequest:
        if self.scope != "book" and (self.chapters or self.source):
            raise ValueError('chapters and source apply to scope "book" only; send "scope": "book"')
        return self

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value:
            raise ValueError("stop sequences are not supported for knowledge-base chat")
        return value


class KBQueryRequest(_Body):
    """``POST /v1/kb/{name}/query``."""

    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=100)
    mode: Mode | None = None

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query must contain text")
        return no_lone_surrogates(value)


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input", mode="before")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if any(not isinstance(v, str) for v in value):
                raise ValueError("input must be a string or a list of strings (token arrays are not supported)")
        elif not isinstance(value, str):
            raise ValueError("input must be a string or a list of strings (token arrays are not supported)")
        for text in [value] if isinstance(value, str) else value:
            no_lone_surrogates(text)  # the embedding tokenizer raised TypeError on one: a 500
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
