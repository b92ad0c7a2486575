"""OpenAI's wire format for completions: ``chat.completion`` bodies and ``chat.completion.chunk``
server-sent events, for plain chat jobs and knowledge-base answers."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from app.api.chat_jobs import ChatJob
from app.api.errors import error_event as error_payload
from chains.events import Answer, Progress, Reasoning, Sources, Token
from llm.reasoning import Split

__all__ = ["CompletionIds", "source_name", "chat_completion_body", "chat_sse", "kb_answer_sse", "kb_completion_body"]

log = logging.getLogger(__name__)

DONE_EVENT = "[DONE]"
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def openai_finish_reason(reason: str | None) -> str | None:
    """``reason`` as one of OpenAI's ``finish_reason`` values: a remote server's own (vLLM's "abort",
    "error") became "stop" (the openai types refuse others: a 400 for a whole answer, an error event
    mid-stream, for an answer that had arrived)."""
    return reason if reason is None or reason in FINISH_REASONS else "stop"


@dataclass
class CompletionIds:
    """``id``/``created``/``model`` shared by every chunk of one completion."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``chat.completion.chunk``, validated as the ``openai`` package's ``ChatCompletionChunk``;
        ``extra`` are top-level fields (``usage``, glmkb's ``sources``...)."""
        chunk = ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(index=0, delta=ChoiceDelta(**delta),
                                  finish_reason=openai_finish_reason(finish_reason), logprobs=None)],
            **extra,
        )
        return _dump(chunk)

    def completion(self, text: str, finish_reason: str, *, reasoning: str = "", **extra: Any) -> dict[str, Any]:
        """A ``chat.completion``, validated as the ``openai`` package's ``ChatCompletion``; a reasoning
        model's thinking in the message (``thinking_fields``)."""
        thinking = thinking_fields(reasoning)
        completion = ChatCompletion(
            id=self.id,
            object="chat.completion",
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    index=0,
                    message=ChatCompletionMessage(role="assistant", content=text, **thinking),
                    finish_reason=openai_finish_reason(finish_reason),  # type: ignore[arg-type]
                    logprobs=None,
                )
            ],
            **extra,
        )
        return _dump(completion)


def thinking_fields(reasoning: str) -> dict[str, str]:
    """A reasoning model's thinking under both names clients read: ``reasoning_content`` (DeepSeek's API,
    the Vercel AI SDK, vLLM before its rename) and ``reasoning`` (vLLM since late 2025, OpenRouter)."""
    return {"reasoning_content": reasoning, "reasoning": reasoning} if reasoning else {}


def _dump(response: Any) -> dict[str, Any]:
    """The response as JSON-ready data: fields that were set (``None`` included), no defaults."""
    return response.model_dump(mode="json", exclude_unset=True)


def sse(data: dict[str, Any]) -> str:
    """One server-sent event's ``data``: the payload as JSON (non-ASCII kept as is);
    ``sse-starlette`` frames it (``app.api.streaming.event_stream``)."""
    return json.dumps(data, ensure_ascii=False)


def error_event(error: BaseException) -> str:
    """The in-stream error event OpenAI clients raise on (the HTTP status is already 200)."""
    return sse(error_payload(error))


def chat_sse(job: ChatJob, *, model: str, include_usage: bool) -> Iterator[str]:
    """The ``chat.completion.chunk`` events of ``job``, ending in ``data: [DONE]``.

    Chunks: the assistant role, one per piece (a reasoning model's thinking in the delta's
    ``thinking_fields``, the answer as ``delta.content``), the ``finish_reason``, then (when
    ``stream_options.include_usage``) one with empty ``choices`` and the ``usage``.
    """
    ids = CompletionIds(model)
    extra = {"usage": None} if include_usage else {}
    pieces = job.pieces()
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}, **extra))
        for piece in pieces:
            delta = thinking_fields(piece.reasoning)
            yield sse(ids.chunk({**delta, "content": piece.answer} if piece.answer else delta, **extra))
        yield sse(ids.chunk({}, job.outcome.finish_reason, **extra))
        if include_usage:
            yield sse({**ids.chunk({}), "choices": [], "usage": job.outcome.usage()})
    except Exception as e:  # noqa: BLE001 - reported in the stream; the status line is sent already
        log.exception("chat completion failed mid-stream")
        yield error_event(e)
    finally:
        pieces.close()
    yield DONE_EVENT


def chat_completion_body(job: ChatJob, pieces: list[Split], *, model: str) -> dict[str, Any]:
    """The whole ``chat.completion`` of ``job`` once its ``pieces`` are exhausted."""
    text, reasoning = "".join(p.answer for p in pieces), "".join(p.reasoning for p in pieces)
    return CompletionIds(model).completion(text, job.outcome.finish_reason, reasoning=reasoning,
                                           usage=job.outcome.usage())


def kb_answer_sse(events: Iterator[Any], *, model: str, usage: Any = None, include_usage: bool = False) -> Iterator[str]:
    """A knowledge-base answer as ``chat.completion.chunk`` events.

    Text pieces arrive as ``delta.content`` (a reasoning model's thinking first, in the delta's
    ``thinking_fields``); the final chunk (the one with ``finish_reason``)
    carries ``sources`` (the passages the answer is based on), ``refused`` and
    ``standalone_question`` at its top level; with ``include_usage`` one more chunk carries
    ``usage`` (``usage``: an ``app.api.kb_chat.UsageCounter``); then ``data: [DONE]``.
    Progress of a whole-book answer (``scope: "book"``: chapters selected, map i/n) comes as
    chunks with an empty ``delta`` and a top-level ``glmkb_progress`` {stage, done, total}
    (``chunk.model_extra["glmkb_progress"]`` in the openai SDK; other clients skip them).
    """
    ids = CompletionIds(model)
    extra = {"usage": None} if include_usage else {}
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}, **extra))
        for event in events:
            if isinstance(event, Token) and event.text:
                yield sse(ids.chunk({"content": event.text}, **extra))
            elif isinstance(event, Reasoning):
                yield sse(ids.chunk(thinking_fields(event.text), **extra))
            elif isinstance(event, Answer):
                reason = usage.finish_reason if usage is not None else "stop"
                yield sse(ids.chunk({}, reason, **extra, **answer_fields(event)))
            elif isinstance(event, Progress):
                progress = {"stage": event.stage, "done": event.done, "total": event.total}
                yield sse(ids.chunk({}, **extra, glmkb_progress=progress))
            elif not isinstance(event, (Sources, Token)):
                log.debug("ignoring event %r", event)
        if include_usage and usage is not None:
            yield sse({**ids.chunk({}), "choices": [], "usage": usage.usage()})
    except Exception as e:  # noqa: BLE001
        log.exception("knowledge-base answer failed mid-stream")
        yield error_event(e)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    yield DONE_EVENT


def kb_completion_body(events: list[Any], *, model: str, usage: Any = None) -> dict[str, Any]:
    """A knowledge-base answer (its collected events) as one ``chat.completion`` with
    top-level ``sources`` and, with ``usage``, the token counts and ``finish_reason``."""
    answer = next(e for e in events if isinstance(e, Answer))
    reason = usage.finish_reason if usage is not None else "stop"
    extra = {"usage": usage.usage()} if usage is not None else {}
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    return CompletionIds(model).completion(answer.text, reason, reasoning=reasoning, **extra, **answer_fields(answer))


def source_name(source: str | None) -> str | None:
    """The file name of a passage's source, never a server path (issue 18 #12: KB chat returned
    absolute paths); ``doc_id`` identifies the document within the knowledge base."""
    if not source:
        return source
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def source_fields(source: Any) -> dict[str, Any]:
    """One cited passage for clients, its ``source`` reduced to the file name."""
    fields = source.to_dict()
    fields["source"] = source_name(fields.get("source"))
    return fields


def answer_fields(answer: Answer) -> dict[str, Any]:
    return {
        "sources": [source_fields(source) for source in answer.sources],
        "refused": answer.refused,
        "standalone_question": answer.question,
    }
